"""Image features through a pluggable extractor; the built-in one runs an ONNX vision model the user names.

Why ONNX and not torchvision: torchvision's wheels do not import beside the project's CPU torch build, and
an ONNX file (exported from any framework: a ResNet, a ViT, a CLIP image tower) runs on onnxruntime, which
the project already ships. Anything with ``describe()`` and ``__call__(batch) -> [n, d]`` can stand in for it
(``build_dataset(image_extractor=...)``).

Images are decoded with Pillow, converted to RGB, resized to the model's input size (plain resize, no crop:
a product photo's edges matter), scaled to [0, 1] and normalised with the ImageNet mean and std that most
published vision models expect (recorded, and changeable). An image that cannot be read (missing file,
not an image, too large, truncated) is counted and reported, and the item gets zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mrdib.artifact.store import sha256_file
from training.data.dataset import DataError
from training.data.encoders import FeatureBlock, Issue, raise_first
from training.data.tables import RawTable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224
MAX_IMAGE_BYTES = 64 << 20  # a product photo above 64 MiB is not a product photo
MAX_IMAGE_PIXELS = 64_000_000  # decompression-bomb guard: refused before the pixels are decoded


class ImageExtractor(Protocol):
    """Maps a batch of preprocessed images (float32 [n, 3, size, size]) to features (float32 [n, d])."""

    size: int

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...



class OnnxImageExtractor:
    """An ONNX image model: input [n, 3, H, W] float32, first output [n, d] (or [n, c, h, w], average-pooled)."""

    def __init__(self, model: Path, size: int | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(model)
        if not self.path.is_file():
            raise DataError(f"{self.path}: image model file does not exist")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors for a bad file
            raise DataError(f"{self.path}: not a loadable ONNX model: {str(e).splitlines()[0][:300]}") from None
        inp = self.session.get_inputs()[0]
        shape = list(inp.shape)
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise DataError(f"{self.path}: input {inp.name!r} has shape {shape}; expected [batch, 3, height, width]")
        fixed = [d for d in shape[2:] if isinstance(d, int)]
        if fixed and (len(fixed) != 2 or fixed[0] != fixed[1]):
            raise DataError(f"{self.path}: input {inp.name!r} has shape {shape}; expected a square image input")
        if fixed and size is not None and size != fixed[0]:
            raise DataError(f"{self.path}: the model takes {fixed[0]}x{fixed[0]} images, --image-size says {size}")
        self.size = int(fixed[0]) if fixed else int(size or DEFAULT_SIZE)
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        try:
            y = np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0], dtype=np.float32)
        except Exception as e:  # onnxruntime's errors are untyped: a wrong input type or size, an unsupported op
            raise DataError(f"{self.path}: running the model on a batch {list(batch.shape)} failed: "
                            f"{str(e).splitlines()[0][:300]}") from None  # fmt: skip
        if y.ndim == 4:  # a feature map: global average pool
            y = y.mean(axis=(2, 3))
        if y.ndim != 2 or y.shape[0] != batch.shape[0]:
            raise DataError(f"{self.path}: output {self.output_name!r} has shape {y.shape}; expected [batch, dim]")
        return y

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "name": "onnx",
            "model": self.path.name,
            "model_sha256": sha256_file(self.path),
            "runtime": f"onnxruntime {ort.__version__}",
            "input": [3, self.size, self.size],
            "preprocess": {"resize": "bilinear, no crop", "scale": "1/255", "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        }


def load_image(path: Path, size: int) -> np.ndarray:
    """float32 [3, size, size], normalised; raises OSError/ValueError with a readable reason when it cannot."""
    from PIL import Image

    if not path.is_file():
        raise OSError("file does not exist")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise ValueError(f"file is larger than {MAX_IMAGE_BYTES >> 20} MiB")
    with Image.open(path) as im:
        if im.width * im.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"{im.width}x{im.height} pixels, above the {MAX_IMAGE_PIXELS:,} allowed")
        rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        x = np.asarray(rgb, dtype=np.float32) / 255.0
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def encode_images(
    table: RawTable,
    rows: np.ndarray,
    column: str,
    extractor: ImageExtractor,
    root: Path,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
    strict: bool = False,
) -> tuple[np.ndarray, FeatureBlock, list[Issue]]:
    """Features of each item's image (paths relative to ``root``); unreadable ones are reported and get zeros.

    ``strict``: the first unreadable image is an error.
    """
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # Pillow refuses larger images itself (DecompressionBombError)
    found: list[tuple[int, Issue]] = []  # (table row, issue), to report in file order
    feats: dict[int, np.ndarray] = {}
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if pending:
            y = extractor(np.stack([x for _, x in pending]))
            if not np.isfinite(y).all():
                raise DataError(f"image extractor {extractor.describe().get('model')} returned NaN or inf")
            feats.update({k: y[j] for j, (k, _) in enumerate(pending)})
            if on_batch is not None:
                on_batch(len(pending))
            pending.clear()

    for k, r in enumerate(rows.tolist()):
        value = table.columns[column][r]
        if value is None:
            found.append((r, Issue(where=table.where(r, column), problem="no image path")))
            if strict:
                raise_first([found[-1][1]], "unreadable images")
            continue
        path = root / str(value)
        try:
            pending.append((k, load_image(path, extractor.size)))
        except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            found.append((r, Issue(where=table.where(r, column), problem=f"cannot read image {path}: {e}")))
            if strict:
                raise_first([found[-1][1]], "unreadable images")
        if len(pending) >= batch_size:
            flush()
    flush()
    issues = [issue for _, issue in sorted(found, key=lambda f: f[0])]
    if not feats:
        first = f" (first: {issues[0].where}: {issues[0].problem})" if issues else ""
        raise DataError(f'{table.path}: no item\'s image in column "{column}" could be read{first}')
    dim = next(iter(feats.values())).shape[0]
    out = np.zeros((len(rows), dim), dtype=np.float32)
    for k, y in feats.items():
        out[k] = y
    block = FeatureBlock(kind="image", columns=[column], dim=dim, extractor=extractor.describe(),
                         filled=len(issues), fill="zeros" if issues else None)  # fmt: skip
    return out, block, issues
