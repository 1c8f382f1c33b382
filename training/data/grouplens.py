"""Loader for MovieLens-100k in its original GroupLens layout (``u.data``, ``u.item``, ``u.user``).

A thin case of the catalogue builder (training/data/build.py): the GroupLens files are read into an
interactions table and an items table (genre flags as a list of genre names, the release decade, the
year), and `build_dataset` does the rest, so MovieLens and a shop's own tables go through one pipeline.

Every rating counts as an implicit interaction (as in ml-100k-mm); the split is MMRec's per-user
rule (training.data.split), so a fresh load with a seed is comparable with the MMRec releases.
Internal rows follow the numeric order of the external ids (user 1 -> row 0, item 1 -> row 0),
which is the order of ml-100k-mm's id mappings.

Modalities:

``meta`` (29 dims)
    19 genre flags, 9 release-decade flags (1920s .. 2000s; earlier years fall in the first),
    and the release year standardised (mean 0, sample std 1). A missing release date is filled with
    the median year before the flags and the standardisation, exactly as ml-100k-mm's meta_feat.npy.
``text`` (384 dims, only with ``text=True``)
    all-MiniLM-L6-v2 sentence embeddings of the titles, unit norm (needs the ``text`` extra).

Display metadata (``item_meta``, written as item_meta.jsonl): per movie its title, release date (as in
u.item, e.g. "01-Jan-1995") and year, genre names, and IMDb URL; empty fields are left out.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from training.data.build import BuildResult, BuildSpec, build_dataset
from training.data.dataset import DataError, InteractionDataset
from training.data.tables import RawTable
from training.data.textio import parse_table

N_GENRES = 19
#: the genre of each flag column of u.item, in order (the fixed contents of MovieLens-100k's u.genre)
GENRE_NAMES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
FIRST_DECADE, N_DECADES = 1920, 9
DECADES = tuple(f"{FIRST_DECADE + 10 * k}s" for k in range(N_DECADES))
_DATE = re.compile(r"^\d{1,2}-[A-Za-z]{3}-(\d{4})$")


def _read_rows(f: Path, sep: str, encoding: str, n_fields: int) -> tuple[list[list[str]], list[int]]:
    """(rows, 1-based line of each) of a headerless GroupLens file; bad field counts or encoding name the line."""
    if not f.is_file():
        raise DataError(f"{f}: file does not exist (MovieLens-100k layout needs u.data and u.item)")
    data = f.read_bytes()
    if not data.strip():
        raise DataError(f"{f}: file is empty")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{f}: line {line}: not valid {encoding}") from None
    rows, lines = [], []
    for k, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) != n_fields:
            raise DataError(f"{f}: line {k}: expected {n_fields} {sep!r}-separated fields, found {len(fields)}")
        rows.append(fields)
        lines.append(k)
    return rows, lines


def _ratings_table(f: Path) -> RawTable:
    """u.data (user, item, rating, unix time; tab-separated) as an interactions table."""
    if not f.is_file():
        raise DataError(f"{f}: file does not exist (MovieLens-100k layout needs u.data and u.item)")
    t = parse_table(f, names=["user", "item", "rating", "timestamp"])
    columns = {
        "user": [str(u) for u in t.int_column("user").tolist()],
        "item": [str(i) for i in t.int_column("item").tolist()],
        "rating": t.float_column("rating").tolist(),
        "timestamp": t.float_column("timestamp").astype(np.int64).tolist(),
    }
    return RawTable(path=f, format="grouplens", columns=columns, lines=[t.line_of(r) for r in range(t.n_rows)])


def _items_table(f: Path) -> RawTable:
    """u.item as an items table: id, title, dates, year, decade (of the year, the median where unknown), genres."""
    rows, lines = _read_rows(f, "|", "latin-1", 5 + N_GENRES)
    years: list[int | None] = []
    for fields, line in zip(rows, lines, strict=True):
        flags = fields[5:]
        if any(g not in ("0", "1") for g in flags):
            raise DataError(f"{f}: line {line}: item {fields[0]}: genre flags must be 0 or 1, got {flags}")
        date = fields[2].strip()
        m = _DATE.match(date)
        if date and not m:
            raise DataError(f"{f}: line {line}: item {fields[0]}: release date {date!r} is not like 01-Jan-1995")
        years.append(int(m.group(1)) if m else None)
    known = [y for y in years if y is not None]
    if not known:
        raise DataError(f"{f}: no item has a release date")
    # ml-100k-mm's meta features give an undated film the median year's decade (and year, see encode_numeric).
    median = float(np.median(known))
    decade = [DECADES[min(max((int(y if y is not None else median) - FIRST_DECADE) // 10, 0), N_DECADES - 1)]
              for y in years]  # fmt: skip
    columns = {
        "id": [r[0].strip() for r in rows],
        "title": [r[1].strip() or None for r in rows],
        "release_date": [r[2].strip() or None for r in rows],
        "year": years,
        "video_release_date": [r[3].strip() or None for r in rows],
        "imdb_url": [r[4].strip() or None for r in rows],
        "genres": [[g for g, flag in zip(GENRE_NAMES, r[5:], strict=True) if flag == "1"] for r in rows],
        "decade": decade,
    }
    for r, (i, line) in enumerate(zip(columns["id"], lines, strict=True)):
        if not i.isdigit():
            raise DataError(f"{f}: line {line}: item id {rows[r][0]!r} is not an integer")
    return RawTable(path=f, format="grouplens", columns=columns, lines=lines)


def grouplens_spec(seed: int = 2024, text: bool = False) -> BuildSpec:
    """The build options that turn the GroupLens tables into ml-100k-mm's features (module docstring)."""
    return BuildSpec(
        name="ml100k", user_col="user", item_col="item", time_col="timestamp", rating_col="rating", id_col="id",
        text=["title"] if text else [], multi=["genres"], categorical=["decade"], numeric=["year"],
        vocabularies={"genres": list(GENRE_NAMES), "decade": list(DECADES)},
        display=["title", "release_date", "year", "video_release_date", "genres", "imdb_url"], seed=seed,
    )  # fmt: skip


def build_grouplens(path: Path, seed: int = 2024, text: bool = False, progress=None) -> BuildResult:
    """Build the dataset and its record from a MovieLens-100k folder (see load_grouplens)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: dataset folder does not exist")
    items = _items_table(path / "u.item")
    ratings = _ratings_table(path / "u.data")
    user_file = path / "u.user"
    user_ids = None
    if user_file.is_file():
        user_rows, user_lines = _read_rows(user_file, "|", "latin-1", 5)
        bad = [line for r, line in zip(user_rows, user_lines, strict=True) if not r[0].strip().isdigit()]
        if bad:
            raise DataError(f"{user_file}: line {bad[0]}: user ids must be integers")
        user_ids = [str(u) for u in sorted({int(r[0]) for r in user_rows})]
    return build_dataset(ratings, items, grouplens_spec(seed, text), user_ids=user_ids, users_source=user_file.name,
                         progress=progress)  # fmt: skip


def load_grouplens(path: Path, seed: int = 2024, text: bool = False) -> InteractionDataset:
    """Load a MovieLens-100k folder as implicit feedback with a fresh MMRec split.

    Parameters
    ----------
    path:
        Folder with ``u.data`` and ``u.item`` (``u.user`` optional: when present its users define the
        user rows, so users without ratings keep a row).
    seed:
        Seed of the per-user shuffle of the split.
    text:
        Also compute the ``text`` modality from the titles (slow; needs the ``text`` extra).
    """
    return build_grouplens(path, seed=seed, text=text).dataset


def title_embeddings(titles: list[str]) -> np.ndarray:
    """float32 [n, 384] unit-norm all-MiniLM-L6-v2 embeddings (needs the ``text`` extra, no network)."""
    from training.data.encoders import MiniLMEmbedder

    return MiniLMEmbedder()(titles)
