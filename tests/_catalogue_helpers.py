"""A small raw shop catalogue (event log + product table + product photos + an ONNX image model) for the
`mrdib data build` tests: everything is written by the test itself, nothing comes from ../shared."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BRANDS = ["Acme", "Globex", "Initech"]
TAGS = ["red", "blue", "wool", "kids", "sale"]
N_ITEMS, N_USERS = 12, 8


@dataclass(frozen=True)
class Catalogue:
    folder: Path
    items: list[dict]  # one dict per product, in file order (ids are not in numeric order on purpose)
    events: list[dict]  # user, item, timestamp, rating, event


def export_tiny_cnn(path: Path, dim: int = 6) -> Path:
    """A real (random-weight) CNN exported with torch.onnx: conv, relu, global average pool, linear."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, kernel_size=3, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, dim),
    ).eval()
    with warnings.catch_warnings():  # the TorchScript exporter, as training/export/onnx_export.py uses
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["pixels"],
                          output_names=["features"], dynamic_axes={"pixels": {0: "n"}, "features": {0: "n"}},
                          opset_version=17, dynamo=False)  # fmt: skip
    return path


def write_images(folder: Path, n: int) -> list[str]:
    """n small product photos (PNG and JPEG, RGB and grayscale, different sizes); returns relative paths."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        size = (20 + 7 * k, 30 + 3 * k)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        im = Image.fromarray(pixels)
        if k % 4 == 3:
            im = im.convert("L")
        name = f"img/p{k}.{'jpg' if k % 2 else 'png'}"
        im.save(folder / name)
        paths.append(name)
    return paths


def make_catalogue(folder: Path) -> Catalogue:
    """items.csv / events.csv (plus the same tables as JSONL and Parquet), photos and model.onnx in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    images = write_images(folder, N_ITEMS)
    ids = [str(i) for i in (10, 2, 33, 4, 5, 16, 7, 8, 9, 1, 11, 12)]  # numeric order differs from file order
    items = []
    for k, item_id in enumerate(ids):
        items.append({
            "id": item_id,
            "title": f"Product {item_id}",
            "description": "" if k == 5 else f"A {TAGS[k % 5]} thing by {BRANDS[k % 3]}, with \"quotes\", and commas",
            "brand": BRANDS[k % 3] if k != 7 else "",
            "tags": [TAGS[k % 5], TAGS[(k + 2) % 5]] if k != 8 else [],
            "price": "" if k == 4 else round(5.0 + 2.5 * k, 2),
            "image": images[k],
        })  # fmt: skip
    rng = np.random.default_rng(1)
    events = []
    t0 = 1_700_000_000
    for u in range(N_USERS):
        for i in rng.choice(N_ITEMS, size=4 + u % 3, replace=False).tolist():
            kind = "purchase" if len(events) % 3 else "view"
            events.append({"user": f"u{u}", "item": ids[i], "timestamp": t0 + len(events) * 60,
                           "rating": int(rng.integers(1, 6)), "event": kind})  # fmt: skip
    cat = Catalogue(folder=folder, items=items, events=events)
    write_tables(cat, "csv")
    write_tables(cat, "jsonl")
    write_tables(cat, "parquet")
    export_tiny_cnn(folder / "model.onnx")
    return cat


def _csv_cell(v: object) -> str:
    if isinstance(v, list):
        v = "|".join(v)
    s = str(v)
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\n') else s


def write_tables(cat: Catalogue, fmt: str, items: list[dict] | None = None, events: list[dict] | None = None) -> None:
    """Write items.<fmt> and events.<fmt> (multi-valued cells as 'a|b' in CSV, as lists elsewhere)."""
    items = cat.items if items is None else items
    events = cat.events if events is None else events
    for name, rows in (("items", items), ("events", events)):
        path = cat.folder / f"{name}.{fmt}"
        if fmt == "csv":
            header = list(rows[0])
            lines = [",".join(header)] + [",".join(_csv_cell(r.get(h, "")) for h in header) for r in rows]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        elif fmt == "jsonl":
            clean = [{k: v for k, v in r.items() if v != ""} for r in rows]  # a blank is a missing key in JSONL
            path.write_text("".join(json.dumps(r) + "\n" for r in clean), encoding="utf-8")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            cols = {h: [None if r.get(h, "") == "" else r[h] for r in rows] for h in rows[0]}
            pq.write_table(pa.table(cols), path)
