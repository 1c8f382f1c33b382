"""Item display metadata (title, category, url, image url, price, ...): one format for datasets and artifacts.

Why one module, outside `training/` and `service/`: the dataset folder, the artifact and `PUT /items` carry
the same per-item fields, and both halves must accept and refuse exactly the same records. It needs only
the standard library, so the service can use it without torch.

The file is `item_meta.jsonl`, UTF-8, one JSON object per line, line r describing item row r:

    {"id": "50", "title": "Star Wars (1977)", "genres": ["Action", "Adventure"], "release_date": "01-Jan-1977"}

- "id" is required and must equal the item's external id (the row's entry in `i_id_mapping.csv` or the
  artifact's `item_ids.json`): a file that drifted out of row order is refused instead of mislabelling items.
- Every other key is a display field chosen by the catalogue's owner. Values are strings, numbers, booleans,
  null or lists of strings, within the bounds below (a product table can hold anything; a response must not).
- Items without metadata have a line with "id" only.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Union

ITEM_META_FILE = "item_meta.jsonl"

#: bounds on one record: a field name, a string value, a list value, and the number of fields
MAX_FIELDS = 32
MAX_KEY_CHARS = 64
MAX_STRING_CHARS = 2048
MAX_LIST_ITEMS = 64
FIELD_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_\-]*$"  # a field name (also the pattern of the service's `fields`)
_KEY = re.compile(FIELD_NAME_RE)

MetaValue = Union[str, int, float, bool, None, list[str]]  # noqa: UP007 (a runtime alias, readable in docs)
MetaRecord = dict[str, MetaValue]


class ItemMetaError(ValueError):
    """A metadata record or file is invalid; the message names the line (or field) and the problem."""


def validate_fields(fields: object, where: str = "meta") -> MetaRecord:
    """The display fields of one item (without "id"), checked against the bounds; raises ItemMetaError."""
    if not isinstance(fields, dict):
        raise ItemMetaError(f"{where}: expected a JSON object of display fields, got {type(fields).__name__}")
    if len(fields) > MAX_FIELDS:
        raise ItemMetaError(f"{where}: {len(fields)} fields, at most {MAX_FIELDS} allowed")
    out: MetaRecord = {}
    for key, value in fields.items():
        if not isinstance(key, str) or len(key) > MAX_KEY_CHARS or not _KEY.match(key):
            raise ItemMetaError(
                f"{where}: field name {key!r} must be 1-{MAX_KEY_CHARS} characters of letters, digits, '_' or '-' "
                "starting with a letter or '_'"
            )
        if key == "id":
            raise ItemMetaError(f"{where}: 'id' is the item's id, not a display field")
        out[key] = _validate_value(value, f"{where}.{key}")
    return out


def _validate_value(value: object, where: str) -> MetaValue:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ItemMetaError(f"{where}: number must be finite, got {value}")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise ItemMetaError(f"{where}: string of {len(value)} characters, at most {MAX_STRING_CHARS} allowed")
        return value
    if isinstance(value, list):
        if len(value) > MAX_LIST_ITEMS:
            raise ItemMetaError(f"{where}: list of {len(value)} entries, at most {MAX_LIST_ITEMS} allowed")
        for k, v in enumerate(value):
            if not isinstance(v, str) or len(v) > MAX_STRING_CHARS:
                raise ItemMetaError(f"{where}[{k}]: list entries must be strings of at most {MAX_STRING_CHARS} chars")
        return list(value)
    raise ItemMetaError(f"{where}: unsupported value type {type(value).__name__} (string, number, bool, null, list)")


def read_item_meta(path: Path, item_ids: Sequence[str]) -> list[MetaRecord]:
    """The display fields of every item row, in row order; the file must list exactly `item_ids`, in order."""
    path = Path(path)
    records: list[MetaRecord] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    raise ItemMetaError(f"{path}: line {lineno}: empty line (one JSON object per item row)")
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ItemMetaError(f"{path}: line {lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
                    raise ItemMetaError(f'{path}: line {lineno}: expected an object with a string "id"')
                row = lineno - 1
                if row >= len(item_ids):
                    raise ItemMetaError(f"{path}: line {lineno}: more lines than the {len(item_ids)} items")
                if obj["id"] != item_ids[row]:
                    raise ItemMetaError(
                        f"{path}: line {lineno}: id {obj['id']!r} but item row {row} is {item_ids[row]!r} "
                        "(lines must follow the item rows)"
                    )
                fields = {k: v for k, v in obj.items() if k != "id"}
                records.append(validate_fields(fields, f"{path}: line {lineno}"))
    except OSError as e:
        raise ItemMetaError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ItemMetaError(f"{path}: not UTF-8 text ({e.reason})") from None
    if len(records) != len(item_ids):
        raise ItemMetaError(f"{path}: {len(records)} lines for {len(item_ids)} items (one line per item row)")
    return records


def write_item_meta(path: Path, item_ids: Sequence[str], records: Sequence[MetaRecord]) -> Path:
    """Write `records` (row order, fields without "id") as `item_meta.jsonl`; validates every record first."""
    if len(records) != len(item_ids):
        raise ItemMetaError(f"{len(records)} metadata records for {len(item_ids)} items")
    lines = []
    for row, (item_id, rec) in enumerate(zip(item_ids, records, strict=True)):
        fields = validate_fields(rec, f"item row {row} ({item_id!r})")
        lines.append(json.dumps({"id": item_id, **fields}, ensure_ascii=False, separators=(",", ":")))
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def select_fields(record: MetaRecord, names: Sequence[str]) -> MetaRecord:
    """The requested display fields of one item (missing ones are left out, not null)."""
    return {n: record[n] for n in names if n in record}
