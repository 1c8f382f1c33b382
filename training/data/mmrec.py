"""Loader for the MMRec data layout (the research toolbox's one format for every dataset).

A dataset folder holds:

- ``<name>.inter``: tab-separated, header first, columns ``userID itemID rating timestamp x_label``
  in any order (extra columns are ignored; ``rating`` and ``timestamp`` are optional), 0-based ids,
  ``x_label`` 0/1/2 = train/valid/test.
- ``<modality>_feat.npy``: one 2-D numeric array per modality; row r is itemID r.
- optional ``i_id_mapping.csv`` / ``u_id_mapping.csv``: tab-separated, header first, external id
  and internal id (``org_id remap_id`` here; the Amazon releases use ``asin itemID`` and
  ``reviewerID userID``) so that the artifact can translate back to the shop's ids.
- optional ``item_meta.jsonl``: display fields per item row (title, genres, url, ...), the format of
  mrdib/item_meta.py; carried into the artifact so that responses can show them.

The real Amazon Baby/Sports/Clothing releases load unchanged. Internal rows are the file's ids,
unchanged, so that externally produced score matrices (e.g. eval-golden) stay aligned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mrdib.item_meta import ITEM_META_FILE, ItemMetaError, read_item_meta, write_item_meta
from training.data.dataset import TEST, TRAIN, VALID, DataError, InteractionDataset
from training.data.textio import Table, parse_table

USER_COL, ITEM_COL, SPLIT_COL, TIME_COL = "userID", "itemID", "x_label", "timestamp"
REQUIRED_COLUMNS = (USER_COL, ITEM_COL, SPLIT_COL)
FEATURE_SUFFIX = "_feat.npy"
ITEM_MAPPING, USER_MAPPING = "i_id_mapping.csv", "u_id_mapping.csv"
# Column names that hold the internal (0-based) id in a mapping file; the other column is external.
_INTERNAL_ID_NAMES = {"remap_id", "itemID", "userID", "item_id", "user_id"}
_FINITE_CHECK_ROWS = 4096  # rows per chunk when scanning features, to bound the temporary bool array


def find_inter_file(path: Path, inter_file: str | None = None) -> Path:
    """The folder's one ``.inter`` file (or the named one); ambiguity is an error, not a guess."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: dataset folder does not exist")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder (expected an MMRec dataset folder)")
    if inter_file is not None:
        f = path / inter_file
        if not f.is_file():
            raise DataError(f"{f}: interaction file does not exist")
        return f
    found = sorted(p for p in path.glob("*.inter") if p.is_file())
    if not found:
        raise DataError(f"{path}: no *.inter file (MMRec layout needs <name>.inter)")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataError(f"{path}: several .inter files ({names}); ambiguous, pass inter_file= to choose one")
    return found[0]


def find_feature_files(path: Path, modality_map: dict[str, str] | None = None) -> dict[str, Path]:
    """modality name -> feature file; from ``modality_map`` or from ``<modality>_feat.npy`` names."""
    path = Path(path)
    if modality_map:
        files = {}
        for m, name in modality_map.items():
            f = path / name
            if not f.is_file():
                raise DataError(f"{f}: feature file for modality {m!r} does not exist")
            files[m] = f
        return files
    files = {p.name[: -len(FEATURE_SUFFIX)]: p for p in sorted(path.glob("*" + FEATURE_SUFFIX)) if p.is_file()}
    if not files:
        raise DataError(f"{path}: no *{FEATURE_SUFFIX} feature files (e.g. image_feat.npy, text_feat.npy)")
    return files


def load_features(f: Path, modality: str) -> np.ndarray:
    """One modality's item features as float32 [n_items, d]; never unpickles."""
    try:
        with f.open("rb") as fh:
            magic = fh.read(6)
    except OSError as e:
        raise DataError(f"{f}: cannot read: {e.strerror or e}") from None
    if magic.startswith(b"PK"):
        raise DataError(f"{f}: is an .npz archive, expected a single .npy array")
    if magic != b"\x93NUMPY":
        raise DataError(f"{f}: not a .npy file (no NumPy header); save features with np.save")
    try:
        x = np.load(f, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise DataError(
                f"{f}: holds a Python-object array, which would need unpickling (refused for safety); "
                "save the features as a numeric array, e.g. np.save(path, x.astype(np.float32))"
            ) from None
        raise DataError(f"{f}: not a valid .npy file: {e}") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{f}: not a readable .npy file: {e}") from None
    if x.dtype.kind not in "biuf":
        raise DataError(f"{f}: features of modality {modality!r} must be numeric, got dtype {x.dtype}")
    if x.ndim != 2:
        raise DataError(f"{f}: features must be a 2-D array [n_items, dim], got shape {x.shape}")
    if x.shape[1] == 0:
        raise DataError(f"{f}: features have dimension 0")
    x = np.ascontiguousarray(x, dtype=np.float32)
    for start in range(0, x.shape[0], _FINITE_CHECK_ROWS):
        block = x[start : start + _FINITE_CHECK_ROWS]
        ok = np.isfinite(block).all(axis=1)
        if not ok.all():
            r = start + int(np.flatnonzero(~ok)[0])
            raise DataError(f"{f}: row {r} (itemID {r}) holds NaN or inf (or a value too large for float32)")
    return x


def read_id_mapping(f: Path, n_min: int, kind: str, exact: bool) -> list[str]:
    """External ids ordered by internal id from a two-column mapping file.

    ``n_min``: the mapping must cover internal ids 0..n_min-1; ``exact``: and no more (items, whose
    count is fixed by the feature rows).
    """
    t = parse_table(f)
    if t.n_cols < 2:
        raise DataError(f"{f}: id mapping needs two columns (external id, internal id), header is {t.header}")
    internal = next((h for h in t.header if h in _INTERNAL_ID_NAMES), t.header[1])
    external = next(h for h in t.header if h != internal)
    remap = t.int_column(internal)
    org = [s.strip() for s in t.column(external)]
    m = len(remap)
    if m == 0:
        raise DataError(f"{f}: id mapping has no rows")
    bad = np.flatnonzero((remap < 0) | (remap >= m))
    if len(bad):
        r = int(bad[0])
        raise DataError(f"{f}: line {t.line_of(r)}: internal {kind} id {remap[r]} outside 0..{m - 1}")
    counts = np.bincount(remap, minlength=m)
    if (counts != 1).any():
        dup = int(np.flatnonzero(counts > 1)[0])
        raise DataError(f"{f}: internal {kind} id {dup} is mapped more than once")
    if len(set(org)) != m:
        raise DataError(f"{f}: external {kind} ids are not unique")
    if m < n_min or (exact and m != n_min):
        need = f"exactly {n_min}" if exact else f"at least {n_min}"
        raise DataError(f"{f}: maps {m} {kind}s, the dataset needs {need}")
    ids = [""] * m
    for r, o in zip(remap.tolist(), org, strict=True):
        ids[r] = o
    return ids


def _check_columns(t: Table) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in t.header]
    if missing:
        raise DataError(f"{t.path}: header {t.header} lacks required column(s) {missing}")
    dup = sorted({h for h in t.header if t.header.count(h) > 1})
    if dup:
        raise DataError(f"{t.path}: header repeats column(s) {dup}")
    if t.n_rows == 0:
        raise DataError(f"{t.path}: no interaction rows after the header")


def _first_line(t: Table, mask: np.ndarray) -> int:
    return t.line_of(int(np.flatnonzero(mask)[0]))


def load_mmrec(
    path: Path, modality_map: dict[str, str] | None = None, inter_file: str | None = None
) -> InteractionDataset:
    """Load an MMRec dataset folder into an InteractionDataset.

    Parameters
    ----------
    path:
        The dataset folder.
    modality_map:
        Optional {modality name: feature file name}; default: every ``<modality>_feat.npy``.
    inter_file:
        Optional name of the ``.inter`` file; required when the folder holds several.

    Clean-ups (each reported in ``dataset.warnings``): duplicate (user, item) pairs keep their first
    row; users without any training interaction lose their valid/test rows too (as MMRec does), since
    no model can learn them. Their user rows stay, so internal ids equal the file's ids.
    """
    path = Path(path)
    inter = find_inter_file(path, inter_file)
    feature_files = find_feature_files(path, modality_map)
    features = {m: load_features(f, m) for m, f in feature_files.items()}
    rows = {m: x.shape[0] for m, x in features.items()}
    if len(set(rows.values())) > 1:
        detail = ", ".join(f"{feature_files[m].name}: {r} rows" for m, r in rows.items())
        raise DataError(f"{path}: feature files disagree on the number of items ({detail})")
    n_items = next(iter(rows.values()))
    if n_items == 0:
        raise DataError(f"{next(iter(feature_files.values()))}: feature file has 0 rows (no items)")

    t = parse_table(inter)
    _check_columns(t)
    users = t.int_column(USER_COL)
    items = t.int_column(ITEM_COL)
    splits = t.int_column(SPLIT_COL)
    timestamps = (
        t.float_column(TIME_COL).astype(np.int64) if TIME_COL in t.header else np.zeros(len(users), np.int64)
    )
    if (users < 0).any():
        raise DataError(f"{inter}: line {_first_line(t, users < 0)}: negative userID")
    bad_item = (items < 0) | (items >= n_items)
    if bad_item.any():
        r = int(np.flatnonzero(bad_item)[0])
        feat_names = ", ".join(f.name for f in feature_files.values())
        raise DataError(
            f"{inter}: line {t.line_of(r)}: itemID {items[r]} outside 0..{n_items - 1} "
            f"(the feature files {feat_names} have {n_items} rows)"
        )
    bad_split = ~np.isin(splits, (TRAIN, VALID, TEST))
    if bad_split.any():
        r = int(np.flatnonzero(bad_split)[0])
        raise DataError(f"{inter}: line {t.line_of(r)}: x_label {splits[r]} is not 0 (train), 1 (valid) or 2 (test)")

    n_users = int(users.max()) + 1
    item_ids = (
        read_id_mapping(path / ITEM_MAPPING, n_items, "item", exact=True)
        if (path / ITEM_MAPPING).is_file()
        else [str(i) for i in range(n_items)]
    )
    if (path / USER_MAPPING).is_file():
        user_ids = read_id_mapping(path / USER_MAPPING, n_users, "user", exact=False)
    else:
        user_ids = [str(u) for u in range(n_users)]
    n_users = len(user_ids)

    warnings: list[str] = []
    keep = np.ones(len(users), dtype=bool)
    key = users * n_items + items
    _, first = np.unique(key, return_index=True)
    if len(first) < len(key):
        dup = np.ones(len(key), dtype=bool)
        dup[first] = False
        keep &= ~dup
        warnings.append(
            f"{inter.name}: dropped {int(dup.sum())} duplicate (user, item) rows, kept each pair's first "
            f"(first duplicate on line {_first_line(t, dup)})"
        )
    has_train = np.bincount(users[keep & (splits == TRAIN)], minlength=n_users) > 0
    orphan = keep & ~has_train[users]
    if orphan.any():
        n_orphans = len(np.unique(users[orphan]))
        keep &= ~orphan
        warnings.append(
            f"{inter.name}: dropped {n_orphans} user(s) without training interactions and their "
            f"{int(orphan.sum())} valid/test rows (first on line {_first_line(t, orphan)})"
        )

    item_meta = None
    if (path / ITEM_META_FILE).is_file():
        try:
            item_meta = read_item_meta(path / ITEM_META_FILE, item_ids)
        except ItemMetaError as e:
            raise DataError(str(e)) from None

    return InteractionDataset(
        name=inter.stem,
        users=users[keep],
        items=items[keep],
        timestamps=timestamps[keep],
        splits=splits[keep].astype(np.int8),
        user_ids=user_ids,
        item_ids=item_ids,
        features=features,
        warnings=warnings,
        item_meta=item_meta,
    )


def _write_mapping(f: Path, ids: list[str]) -> None:
    for k, e in enumerate(ids):
        if not e or any(c in e for c in "\t\n\r"):
            raise DataError(f"{f}: external id {e!r} of row {k} is empty or holds a tab/newline")
    f.write_text("org_id\tremap_id\n" + "".join(f"{e}\t{k}\n" for k, e in enumerate(ids)), encoding="utf-8")


def write_mmrec(ds: InteractionDataset, out: Path, name: str | None = None, ratings: np.ndarray | None = None) -> Path:
    """Write ``ds`` in the MMRec layout under ``out`` (created); ``load_mmrec(out)`` gives it back.

    Writes ``<name>.inter`` (default name: ``ds.name``), ``<modality>_feat.npy``, both id mappings and, when the
    dataset has display fields, ``item_meta.jsonl``.
    ``ratings`` (float [n]) fills the rating column; default 1.0 (implicit feedback). Refuses a folder that
    already holds another ``.inter`` file, since the result would be ambiguous to load.
    """
    out = Path(out)
    name = name or ds.name
    out.mkdir(parents=True, exist_ok=True)
    stale = [p.name for p in out.glob("*.inter") if p.name != f"{name}.inter"]
    if stale:
        raise DataError(f"{out}: already holds other .inter files {stale}; choose an empty folder")
    r = np.ones(len(ds.users)) if ratings is None else np.asarray(ratings, dtype=np.float64)
    rows = zip(ds.users.tolist(), ds.items.tolist(), r.tolist(), ds.timestamps.tolist(), ds.splits.tolist(),
               strict=True)  # fmt: skip
    body = "".join(f"{u}\t{i}\t{x}\t{t}\t{s}\n" for u, i, x, t, s in rows)
    (out / f"{name}.inter").write_text(f"{USER_COL}\t{ITEM_COL}\trating\t{TIME_COL}\t{SPLIT_COL}\n" + body,
                                       encoding="utf-8")  # fmt: skip
    for m, x in ds.features.items():
        np.save(out / f"{m}{FEATURE_SUFFIX}", np.ascontiguousarray(x, dtype=np.float32))
    _write_mapping(out / ITEM_MAPPING, ds.item_ids)
    _write_mapping(out / USER_MAPPING, ds.user_ids)
    if ds.item_meta is not None:
        try:
            write_item_meta(out / ITEM_META_FILE, ds.item_ids, ds.item_meta)
        except ItemMetaError as e:
            raise DataError(f"{out / ITEM_META_FILE}: {e}") from None
    return out
