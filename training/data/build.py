"""`mrdib data build`: a shop's event log and product table in, an MMRec dataset folder out.

Inputs: an interactions table (user, item, timestamp; optionally a rating and an event type to filter on)
and an items table (an id column plus the columns to turn into features and to show). Output: the MMRec
layout (training/data/mmrec.py), ``item_meta.jsonl`` with the display fields (mrdib/item_meta.py) and
``build_record.json``: how every feature column was made, what was dropped or filled and why.

Modalities, each a ``<modality>_feat.npy``:

``text``   the text columns of an item joined with ". " and embedded (all-MiniLM-L6-v2 by default, 384-d).
``image``  the image-path column through an image extractor (an ONNX model the user names, see images.py).
``meta``   multi-hot blocks (multi-valued columns), then one-hot blocks (categorical columns), then the
           standardised numeric columns, each in the order named; the record gives each block's offset.

Rows: items follow their ids' order (numeric when every id is an integer, else text order), as do users;
every item of the table gets a row, with or without interactions (new items are exactly the ones a
content-aware model can still recommend). The split is MMRec's per-user rule (training/data/split.py).

Bad input: a structural problem (a missing column, an empty or repeated id, an unparseable time, an item
the table lacks) is a DataError naming file, line and column. Item-level gaps (empty text, an unreadable
image, a missing number) are filled neutrally, counted and listed in the record (``strict`` makes them
errors); rows dropped by a filter are counted in the record too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mrdib.artifact.store import sha256_file
from mrdib.item_meta import ITEM_META_FILE, MAX_FIELDS, MAX_KEY_CHARS, MAX_LIST_ITEMS, MAX_STRING_CHARS, MetaRecord
from training.data.dataset import DataError, InteractionDataset
from training.data.encoders import (
    FeatureBlock,
    Issue,
    TextEmbedder,
    cell_text,
    encode_categorical,
    encode_numeric,
    encode_text,
    split_values,
)
from training.data.mmrec import FEATURE_SUFFIX, ITEM_MAPPING, USER_MAPPING, write_mmrec
from training.data.split import mmrec_split
from training.data.tables import RawTable, read_table

BUILD_RECORD_FILE = "build_record.json"
RECORD_SCHEMA = 1
MAX_LISTED_ISSUES = 20  # the record lists this many filled items per kind; the count covers all
_INT_ID = re.compile(r"^-?\d{1,18}$")
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-]")

#: progress hook: (label, total) -> advance(n); the CLI passes rich progress bars
Progress = Callable[[str, int], Callable[[int], None]]


class BuildSpec(BaseModel):
    """What to read from the two tables and how to encode it (the options of `mrdib data build`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("dataset", pattern=r"^[A-Za-z0-9_\-]+$", description="Stem of the written <name>.inter.")
    user_col: str = "user"
    item_col: str = "item"
    time_col: str | None = Field("timestamp", description="None: the log has no times (all 0).")
    rating_col: str | None = None
    min_rating: float | None = Field(None, description="Keep only rows rated at least this (needs rating_col).")
    type_col: str | None = None
    types: list[str] | None = Field(None, description="Keep only rows of these event types (needs type_col).")
    id_col: str = Field("id", description="The items table's id column.")
    text: list[str] = []
    categorical: list[str] = []
    multi: list[str] = []
    multi_sep: str = Field("|", min_length=1)
    numeric: list[str] = []
    image: str | None = None
    image_root: str | None = Field(None, description="Folder image paths are relative to (default: the items file's).")
    display: list[str] | None = Field(None, description="Display fields; default: every feature column but images.")
    max_categories: int = Field(1000, ge=2)
    vocabularies: dict[str, list[str]] = Field(default_factory=dict, description="Fixed one/multi-hot columns.")
    drop_unknown_items: bool = Field(False, description="Drop (and count) rows whose item the table lacks.")
    strict: bool = Field(False, description="Empty text or an unreadable image is an error, not a filled gap.")
    seed: int = 2024

    @model_validator(mode="after")
    def _check(self) -> BuildSpec:
        if self.min_rating is not None and self.rating_col is None:
            raise ValueError("--min-rating needs --rating-col")
        if self.types is not None and self.type_col is None:
            raise ValueError("--types needs --type-col")
        both = sorted(set(self.categorical) & set(self.multi))
        if both:
            raise ValueError(f"column(s) {both} are named both categorical and multi-valued")
        if not (self.text or self.categorical or self.multi or self.numeric or self.image):
            raise ValueError("name at least one feature column (--text, --categorical, --multi, --numeric, --image)")
        return self

    def feature_columns(self) -> list[str]:
        return list(dict.fromkeys([*self.text, *self.categorical, *self.multi, *self.numeric]))


class SourceRecord(BaseModel):
    path: str
    format: str
    sha256: str
    rows: int


class ModalityRecord(BaseModel):
    dim: int
    blocks: list[FeatureBlock]


class BuildRecord(BaseModel):
    """build_record.json: how the dataset in this folder was made, for `mrdib data inspect` and for audits."""

    schema_version: int = RECORD_SCHEMA
    created_at: str
    mrdib_version: str | None
    name: str
    sources: dict[str, SourceRecord]
    spec: dict[str, Any]
    split: dict[str, Any]
    counts: dict[str, Any]
    dropped: dict[str, int] = Field(default_factory=dict, description="Interaction rows dropped, per reason.")
    modalities: dict[str, ModalityRecord]
    display_fields: dict[str, str] = Field(default_factory=dict, description="item_meta field -> source column.")
    issues: dict[str, list[Issue]] = Field(default_factory=dict, description="Filled items per kind (first ones).")
    issue_counts: dict[str, int] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class BuildResult:
    dataset: InteractionDataset
    ratings: np.ndarray  # float64 [n] rating of each interaction (1.0 without a rating column)
    record: BuildRecord


# ------------------------------------------------------------------------------------------ helpers
def _id_order(ids: Sequence[str]) -> np.ndarray:
    """Row order of ids: numeric when every id is an integer (so 2 < 10), else by text."""
    if ids and all(_INT_ID.match(i) for i in ids):
        return np.argsort(np.array([int(i) for i in ids], dtype=np.int64), kind="stable")
    return np.argsort(np.array(ids, dtype=object), kind="stable")


def _id_column(table: RawTable, column: str, what: str) -> list[str]:
    """A column of ids as stripped strings; an empty id, or one with a tab or newline, names its line."""
    ids = []
    for r, v in enumerate(table.columns[column]):
        s = cell_text(v)
        if isinstance(v, float) and v.is_integer():
            s = str(int(v))  # a Parquet/JSON float id 5.0 is the id "5"
        if not s:
            raise DataError(f"{table.where(r, column)}: empty {what} id")
        if any(c in s for c in "\t\n\r"):
            raise DataError(f"{table.where(r, column)}: {what} id {s!r} holds a tab or newline")
        ids.append(s)
    return ids


def _parse_time(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    s = str(value).strip()
    try:
        return float(s)
    except ValueError:
        pass
    dt = datetime.fromisoformat(s)  # ValueError for anything that is not ISO 8601
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _timestamps(table: RawTable, column: str, rows: np.ndarray) -> np.ndarray:
    """int64 unix seconds: numbers as they are, ISO 8601 strings (no zone = UTC), Parquet timestamps."""
    out = np.zeros(len(rows), dtype=np.int64)
    cells = table.columns[column]
    for k, r in enumerate(rows.tolist()):
        v = cells[r]
        if v is None:
            raise DataError(f"{table.where(r, column)}: no timestamp")
        try:
            t = _parse_time(v)
        except (ValueError, TypeError, OverflowError):
            raise DataError(
                f"{table.where(r, column)}: timestamp {v!r} is neither unix seconds nor an ISO 8601 date-time"
            ) from None
        if not math.isfinite(t) or abs(t) > 1e13:
            raise DataError(f"{table.where(r, column)}: timestamp {v!r} is out of range")
        out[k] = int(t)
    return out


def _numbers(table: RawTable, column: str) -> np.ndarray:
    out = np.full(table.n_rows, np.nan)
    for r, v in enumerate(table.columns[column]):
        if v is None:
            continue
        try:
            out[r] = float(v)
        except (TypeError, ValueError):
            raise DataError(f"{table.where(r, column)}: expected a number, got {v!r}") from None
    return out



def _source(table: RawTable) -> SourceRecord:
    sha = sha256_file(table.path) if table.path.is_file() else ""
    return SourceRecord(path=str(table.path), format=table.format, sha256=sha, rows=table.n_rows)


def _display_key(column: str) -> str:
    """A column name as an item_meta field name ('Product Name' -> 'Product_Name')."""
    key = _KEY_BAD.sub("_", column)[:MAX_KEY_CHARS]
    return key if re.match(r"^[A-Za-z_]", key) else f"_{key}"[:MAX_KEY_CHARS]


def _display_value(value: Any, multi: bool, numeric: bool, sep: str) -> Any:
    """A cell as an item_meta value (bounded: long strings and lists are cut), or None to leave it out."""
    if value is None:
        return None
    if multi or isinstance(value, list):
        values = split_values(value, sep) if multi else [cell_text(v) for v in value if cell_text(v)]
        return [v[:MAX_STRING_CHARS] for v in values[:MAX_LIST_ITEMS]] or None
    if isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
        return value
    text = cell_text(value)
    if numeric and text:
        try:
            x = float(text)
            return int(x) if x.is_integer() and _INT_ID.match(text) else x
        except ValueError:
            pass
    return text[:MAX_STRING_CHARS] or None


# ------------------------------------------------------------------------------------------ building
def _item_rows(items: RawTable, spec: BuildSpec) -> tuple[list[str], np.ndarray]:
    """(external item ids in row order, the items-table row of each)."""
    ids = _id_column(items, spec.id_col, "item")
    seen: dict[str, int] = {}
    for r, i in enumerate(ids):
        if i in seen:
            raise DataError(f"{items.where(r, spec.id_col)}: item id {i!r} repeats {items.where(seen[i])}")
        seen[i] = r
    order = _id_order(ids)
    return [ids[k] for k in order.tolist()], order


def _interactions(
    inter: RawTable, spec: BuildSpec, item_index: dict[str, int], items_name: str, dropped: dict[str, int]
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(table rows kept, their user ids, item rows, timestamps, ratings) after the filters."""
    keep = np.ones(inter.n_rows, dtype=bool)
    ratings = np.ones(inter.n_rows)
    if spec.rating_col is not None:
        ratings = _numbers(inter, spec.rating_col)
        if spec.min_rating is not None:
            low = ~(ratings >= spec.min_rating)  # a missing rating is below any threshold
            dropped[f"rating below {spec.min_rating:g} or missing"] = int(low.sum())
            keep &= ~low
        ratings = np.nan_to_num(ratings, nan=1.0)
    if spec.type_col is not None and spec.types is not None:
        wanted = set(spec.types)
        other = np.array([cell_text(v) not in wanted for v in inter.columns[spec.type_col]], dtype=bool)
        dropped[f"event type not in {sorted(wanted)}"] = int((other & keep).sum())
        keep &= ~other
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise DataError(f"{inter.path}: no interaction row is left after the filters ({dropped})")
    users = _id_column(inter, spec.user_col, "user")
    item_ids = _id_column(inter, spec.item_col, "item")
    item_row = np.array([item_index.get(item_ids[r], -1) for r in rows.tolist()], dtype=np.int64)
    unknown = item_row < 0
    if unknown.any():
        first = int(rows[np.flatnonzero(unknown)[0]])
        n = int(unknown.sum())
        if not spec.drop_unknown_items:
            more = f" ({n - 1} more such rows)" if n > 1 else ""
            raise DataError(
                f"{inter.where(first, spec.item_col)}: item {item_ids[first]!r} is not in {items_name}{more}; "
                "fix the tables or pass --drop-unknown-items to drop such rows"
            )
        dropped[f"item not in {items_name}"] = n
        rows, item_row = rows[~unknown], item_row[~unknown]
        if len(rows) == 0:
            raise DataError(f"{inter.path}: none of its items is in {items_name}")
    ts = _timestamps(inter, spec.time_col, rows) if spec.time_col else np.zeros(len(rows), dtype=np.int64)
    return rows, [users[r] for r in rows.tolist()], item_row, ts, ratings[rows]


def _features(
    items: RawTable,
    rows: np.ndarray,
    spec: BuildSpec,
    text_embedder: TextEmbedder | None,
    image_extractor: Any,
    progress: Progress | None,
) -> tuple[dict[str, np.ndarray], dict[str, ModalityRecord], dict[str, list[Issue]]]:
    features: dict[str, np.ndarray] = {}
    records: dict[str, ModalityRecord] = {}
    issues: dict[str, list[Issue]] = {}
    if spec.text:
        advance = progress("embedding text", len(rows)) if progress else None
        x, block, found = encode_text(items, rows, spec.text, text_embedder, on_batch=advance, strict=spec.strict)
        features["text"], records["text"] = x, ModalityRecord(dim=block.dim, blocks=[block])
        issues["empty text"] = found
    if spec.image:
        if image_extractor is None:
            raise DataError("--image needs an image model (--image-model FILE.onnx)")
        from training.data.images import encode_images

        root = Path(spec.image_root) if spec.image_root else items.path.parent
        advance = progress("image features", len(rows)) if progress else None
        x, block, found = encode_images(items, rows, spec.image, image_extractor, root, on_batch=advance,
                                         strict=spec.strict)
        features["image"], records["image"] = x, ModalityRecord(dim=block.dim, blocks=[block])
        issues["unreadable image"] = found
    blocks: list[tuple[np.ndarray, FeatureBlock]] = []
    for col in spec.multi:
        blocks.append(encode_categorical(items, rows, col, True, spec.multi_sep, spec.max_categories,
                                         spec.vocabularies.get(col)))  # fmt: skip
    for col in spec.categorical:
        blocks.append(encode_categorical(items, rows, col, False, spec.multi_sep, spec.max_categories,
                                         spec.vocabularies.get(col)))  # fmt: skip
    if spec.numeric:
        blocks.append(encode_numeric(items, rows, spec.numeric))
    if blocks:
        offset = 0
        for _, block in blocks:
            block.offset, offset = offset, offset + block.dim
        features["meta"] = np.concatenate([x for x, _ in blocks], axis=1)
        records["meta"] = ModalityRecord(dim=offset, blocks=[b for _, b in blocks])
    return features, records, {k: v for k, v in issues.items() if v}


def _display(items: RawTable, rows: np.ndarray, spec: BuildSpec) -> tuple[list[MetaRecord], dict[str, str]]:
    columns = spec.display if spec.display is not None else spec.feature_columns()
    keys: dict[str, str] = {}
    for c in columns:
        key = _display_key(c)
        if key in keys:
            raise DataError(f'display columns "{keys[key]}" and "{c}" both become field "{key}"; rename one')
        keys[key] = c
    if len(keys) > MAX_FIELDS:
        raise DataError(f"{len(keys)} display fields, at most {MAX_FIELDS} allowed (--display)")
    multi, numeric = set(spec.multi), set(spec.numeric)
    records: list[MetaRecord] = []
    for r in rows.tolist():
        rec: MetaRecord = {}
        for key, c in keys.items():
            v = _display_value(items.columns[c][r], c in multi, c in numeric, spec.multi_sep)
            if v is not None:
                rec[key] = v
        records.append(rec)
    return records, keys


def build_dataset(
    interactions: Path | RawTable,
    items: Path | RawTable,
    spec: BuildSpec,
    *,
    text_embedder: TextEmbedder | None = None,
    image_extractor: Any = None,
    user_ids: Sequence[str] | None = None,
    users_source: str = "the user table",
    progress: Progress | None = None,
) -> BuildResult:
    """Build an InteractionDataset (and its record) from the two tables.

    ``text_embedder``: default all-MiniLM-L6-v2 (the ``text`` extra). ``image_extractor``: needed with
    ``spec.image`` (e.g. images.OnnxImageExtractor). ``user_ids``: a fixed user universe (each gets a row,
    even without interactions; a user outside it is an error naming ``users_source``).
    """
    inter = interactions if isinstance(interactions, RawTable) else read_table(interactions)
    table = items if isinstance(items, RawTable) else read_table(items)
    flag = {spec.user_col: "--user-col", spec.item_col: "--item-col", spec.time_col: "--time-col",
            spec.rating_col: "--rating-col", spec.type_col: "--type-col"}  # fmt: skip
    inter.require([c for c in (spec.user_col, spec.item_col, spec.time_col, spec.rating_col, spec.type_col) if c],
                  {k: v for k, v in flag.items() if k})  # fmt: skip
    named = {spec.id_col: "--id-col"}
    for option, cols in (("--text", spec.text), ("--categorical", spec.categorical), ("--multi", spec.multi),
                         ("--numeric", spec.numeric), ("--display", spec.display or [])):  # fmt: skip
        named.update({c: option for c in cols if c not in named})
    if spec.image:
        named.setdefault(spec.image, "--image")
    table.require(list(named), named)

    item_ids, item_rows = _item_rows(table, spec)
    item_index = {i: k for k, i in enumerate(item_ids)}
    dropped: dict[str, int] = {}
    rows, users, items_r, ts, ratings = _interactions(inter, spec, item_index, table.path.name, dropped)

    if user_ids is None:
        uniq = sorted(set(users))
        user_ids = [uniq[k] for k in _id_order(uniq).tolist()]
    user_ids = list(user_ids)
    user_index = {u: k for k, u in enumerate(user_ids)}
    users_r = np.array([user_index.get(u, -1) for u in users], dtype=np.int64)
    if (users_r < 0).any():
        k = int(np.flatnonzero(users_r < 0)[0])
        raise DataError(f"{inter.where(int(rows[k]), spec.user_col)}: user {users[k]!r} is not in {users_source}")

    warnings: list[str] = []
    # Repeated (user, item) rows: keep the earliest (file order breaks ties); implicit feedback counts once.
    order = np.lexsort((np.arange(len(users_r)), ts, users_r * len(item_ids) + items_r))
    key = (users_r * len(item_ids) + items_r)[order]
    first = order[np.r_[True, key[1:] != key[:-1]]]
    keep = np.sort(first)
    if len(keep) < len(users_r):
        n = len(users_r) - len(keep)
        dropped["repeated (user, item), kept the earliest"] = n
        warnings.append(f"{inter.path.name}: dropped {n} repeated (user, item) rows, kept each pair's earliest")
    users_r, items_r, ts, ratings = users_r[keep], items_r[keep], ts[keep], ratings[keep]
    # Sort by (user, time, item) before splitting so that the split does not depend on the file's row order.
    srt = np.lexsort((items_r, ts, users_r))
    users_r, items_r, ts, ratings = users_r[srt], items_r[srt], ts[srt], ratings[srt]
    splits = mmrec_split(users_r, np.random.default_rng(spec.seed))

    features, modality_records, issues = _features(table, item_rows, spec, text_embedder, image_extractor, progress)
    meta, display_keys = _display(table, item_rows, spec)
    for kind, found in issues.items():
        warnings.append(f"{len(found)} item(s) with {kind} got zeros (first: {found[0].where}: {found[0].problem})")
    for b in (b for rec in modality_records.values() for b in rec.blocks if b.kind == "numeric" and b.filled):
        warnings.append(f"{b.filled} item(s) missing a value in {', '.join(b.columns)} got the column median")

    ds = InteractionDataset(
        name=spec.name, users=users_r, items=items_r, timestamps=ts, splits=splits.astype(np.int8),
        user_ids=user_ids, item_ids=item_ids, features=features, warnings=warnings, item_meta=meta,
    )  # fmt: skip
    counts = ds.counts()
    record = BuildRecord(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        mrdib_version=_package_version(),
        name=spec.name,
        sources={"interactions": _source(inter), "items": _source(table)},
        spec=spec.model_dump(mode="json"),
        split={"rule": "mmrec per-user random split (training/data/split.py)", "seed": spec.seed},
        counts={"users": ds.n_users, "items": ds.n_items, "interactions": counts,
                "items_without_interactions": int((np.bincount(items_r, minlength=ds.n_items) == 0).sum())},
        dropped=dropped,
        modalities=modality_records,
        display_fields=display_keys,
        issues={k: v[:MAX_LISTED_ISSUES] for k, v in issues.items()},
        issue_counts={k: len(v) for k, v in issues.items()},
        warnings=warnings,
    )  # fmt: skip
    return BuildResult(dataset=ds, ratings=ratings, record=record)


def _package_version() -> str | None:
    try:
        return metadata.version("mrdib")
    except metadata.PackageNotFoundError:
        return None


def _clear_previous_build(out: Path) -> None:
    """Make ``out`` ready for a build: new or empty, or holding an earlier build (whose files are removed).

    Why: the loader takes every ``*_feat.npy`` of a folder as a modality, so a rebuild with fewer modalities
    over an old one would silently train on the stale file. A folder with other content is refused, not emptied.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    entries = list(out.iterdir())
    if not entries:
        return
    if not (out / BUILD_RECORD_FILE).is_file():
        raise DataError(f"{out}: folder is not empty and holds no earlier build ({BUILD_RECORD_FILE}); "
                        "choose a new or empty folder")  # fmt: skip
    ours = {BUILD_RECORD_FILE, ITEM_MAPPING, USER_MAPPING, ITEM_META_FILE}
    for f in entries:
        if f.is_file() and (f.name in ours or f.name.endswith((".inter", FEATURE_SUFFIX))):
            f.unlink()


def write_build(result: BuildResult, out: Path) -> Path:
    """Write the MMRec layout, item_meta.jsonl and build_record.json under ``out`` (new, empty or an earlier build).
    """
    out = Path(out)
    _clear_previous_build(out)
    write_mmrec(result.dataset, out, ratings=result.ratings)
    (out / BUILD_RECORD_FILE).write_text(result.record.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return out


def read_build_record(folder: Path) -> BuildRecord | None:
    """The folder's build record, or None when it has none (a dataset made elsewhere)."""
    f = Path(folder) / BUILD_RECORD_FILE
    if not f.is_file():
        return None
    try:
        return BuildRecord.model_validate(json.loads(f.read_text(encoding="utf-8")))
    except (OSError, ValueError) as e:
        raise DataError(f"{f}: not a valid build record: {e}") from None
