"""Fixtures shared by the data-layer tests: locating shared/ data and building tiny MMRec folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest


def shared_data() -> Path | None:
    """The project's shared data folder (../shared/data beside the repo, or $MRDIB_SHARED_DATA), if present."""
    candidates = [Path(__file__).resolve().parents[2] / "shared" / "data"]
    if os.environ.get("MRDIB_SHARED_DATA"):
        candidates.insert(0, Path(os.environ["MRDIB_SHARED_DATA"]))
    return next((c for c in candidates if c.is_dir()), None)


def shared_dataset(name: str) -> Path:
    """Path of one shared dataset; skips the test when it is not available."""
    root = shared_data()
    if root is None or not (root / name).is_dir():
        pytest.skip(f"shared dataset {name} not available")
    return root / name


def shared_copy_with_short_text_features(tmp_path: Path) -> Path:
    """A writable copy of ml-100k-mm whose text_feat.npy lacks its last row (1681 of 1682)."""
    src = shared_dataset("ml-100k-mm")
    d = tmp_path / "mm"
    shutil.copytree(src, d)
    for p in d.iterdir():
        p.chmod(0o644)
    np.save(d / "text_feat.npy", np.load(src / "text_feat.npy", allow_pickle=False)[:1681])
    return d


HEADER = "userID\titemID\trating\ttimestamp\tx_label"
# Two users, four items: user 0 has train/valid/test rows, user 1 train only.
GOOD_ROWS = [
    "0\t0\t5.0\t100\t0",
    "0\t1\t4.0\t101\t0",
    "0\t2\t3.0\t102\t1",
    "0\t3\t3.0\t103\t2",
    "1\t1\t2.0\t104\t0",
    "1\t2\t2.0\t105\t0",
]


def make_mmrec(
    folder: Path,
    rows: list[str] | None = None,
    header: str = HEADER,
    features: dict[str, np.ndarray] | None = None,
    name: str = "tiny",
) -> Path:
    """Write a tiny MMRec folder (``<name>.inter`` + feature files); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = GOOD_ROWS if rows is None else rows
    (folder / f"{name}.inter").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    if features is None:
        rng = np.random.default_rng(0)
        features = {"image": rng.standard_normal((4, 6)).astype(np.float32),
                    "text": rng.standard_normal((4, 3)).astype(np.float32)}  # fmt: skip
    for m, x in features.items():
        np.save(folder / f"{m}_feat.npy", x)
    return folder
