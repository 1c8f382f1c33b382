"""One entry point that recognises a dataset folder's layout and calls the right loader.

Why: the CLI, the trainer and the benchmarks accept "a dataset folder"; which format it is in
should be detected once here rather than guessed in each caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from training.data.dataset import DataError, InteractionDataset

Layout = Literal["mmrec", "grouplens"]
GROUPLENS_FILES = ("u.data", "u.item")


def detect_layout(path: Path) -> Layout:
    """``mmrec`` when the folder has a ``.inter`` file, ``grouplens`` when it has ``u.data`` + ``u.item``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: dataset folder does not exist")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder")
    if any(path.glob("*.inter")):
        return "mmrec"
    if all((path / f).is_file() for f in GROUPLENS_FILES):
        return "grouplens"
    raise DataError(
        f"{path}: unknown dataset layout: expected an MMRec folder (<name>.inter + *_feat.npy) "
        "or a MovieLens-100k folder (u.data, u.item)"
    )


def load_dataset(path: Path, seed: int = 2024) -> InteractionDataset:
    """Load a dataset folder in either supported layout (``seed`` only matters for GroupLens splits)."""
    layout = detect_layout(path)
    if layout == "mmrec":
        from training.data.mmrec import load_mmrec

        return load_mmrec(Path(path))
    from training.data.grouplens import load_grouplens

    return load_grouplens(Path(path), seed=seed)
