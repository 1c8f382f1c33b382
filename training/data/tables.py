"""Read a shop's raw tables (CSV/TSV, Parquet, JSON Lines) into columns that remember where each row came from.

Why not pandas: the builder needs, for every cell it refuses, the file and the line (or Parquet row) to
name in the error, and it needs few operations beyond "give me this column". Cells keep the type the
format gives them: strings for CSV, JSON values for JSONL (lists stay lists), Arrow's Python values for
Parquet. Empty CSV cells, JSON null and missing JSONL keys all read as None.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data.dataset import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
           ".jsonl": "jsonl", ".ndjson": "jsonl"}  # fmt: skip
#: cap on one file: the builder holds the table in memory, so refuse what would not fit comfortably
MAX_FILE_BYTES = 4 << 30
_CSV_FIELD_LIMIT = 1 << 24  # 16 MiB per CSV cell (the csv module's default, 128 KiB, is too small for descriptions)


@dataclass(frozen=True)
class RawTable:
    """A table read from one file: named columns of equal length, and each row's place in the file."""

    path: Path
    format: str
    columns: dict[str, list[Any]]
    lines: list[int]  # 1-based line (CSV/JSONL) or row (Parquet) of each row

    @property
    def n_rows(self) -> int:
        return len(self.lines)

    def where(self, row: int, column: str | None = None) -> str:
        """'items.csv: line 7, column "title"': where a problem with one cell is, for an error message."""
        unit = "row" if self.format == "parquet" else "line"
        col = f', column "{column}"' if column is not None else ""
        return f"{self.path}: {unit} {self.lines[row]}{col}"

    def require(self, names: list[str], flag_of: dict[str, str] | None = None) -> None:
        """Refuse a table lacking any of ``names``; the message lists its columns and the flag that named it."""
        flag_of = flag_of or {}
        for name in names:
            if name not in self.columns:
                flag = f" (named by {flag_of[name]})" if name in flag_of else ""
                have = ", ".join(self.columns) or "none"
                raise DataError(f'{self.path}: no column "{name}"{flag}; its columns are: {have}')


def table_format(path: Path) -> str:
    """csv, tsv, parquet or jsonl, from the file name; anything else is refused with the accepted suffixes."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown table format; use one of {', '.join(sorted(FORMATS))}")
    return fmt


def read_table(path: Path) -> RawTable:
    """Read a CSV/TSV (header first), Parquet or JSONL file; unreadable or malformed input is a DataError."""
    path = Path(path)
    fmt = table_format(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: file is empty")
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}: {size / 2**30:.1f} GiB, above the {MAX_FILE_BYTES >> 30} GiB this builder reads")
    if fmt == "parquet":
        table = _read_parquet(path)
    elif fmt == "jsonl":
        table = _read_jsonl(path)
    else:
        table = _read_delimited(path, "\t" if fmt == "tsv" else ",", fmt)
    if table.n_rows == 0:
        raise DataError(f"{path}: no data rows")
    return table


def _open_text(path: Path):
    return path.open(encoding="utf-8-sig", newline="")


def _decode_error(path: Path, e: UnicodeDecodeError) -> DataError:
    line = path.read_bytes()[: e.start].count(b"\n") + 1 if e.start < MAX_FILE_BYTES else "?"
    return DataError(f"{path}: line {line}: not valid UTF-8; re-encode the file as UTF-8")


def _read_delimited(path: Path, sep: str, fmt: str) -> RawTable:
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    lines: list[int] = []
    try:
        with _open_text(path) as fh:
            reader = csv.reader(fh, delimiter=sep, strict=True)
            header = next(reader, None)
            while header is not None and not any(h.strip() for h in header):
                header = next(reader, None)  # leading blank lines
            if header is None:
                raise DataError(f"{path}: file is empty")
            header = [h.strip() for h in header]
            _check_header(path, header)
            cols: list[list[Any]] = [[] for _ in header]
            start = reader.line_num + 1
            for row in reader:
                if not row or not any(c.strip() for c in row):
                    start = reader.line_num + 1
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}: line {start}: {len(row)} fields, the header has {len(header)} ({', '.join(header)})"
                    )
                for col, cell in zip(cols, row, strict=True):
                    cell = cell.strip()
                    col.append(cell if cell else None)
                lines.append(start)
                start = reader.line_num + 1
    except UnicodeDecodeError as e:
        raise _decode_error(path, e) from None
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: malformed {fmt.upper()}: {e}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    return RawTable(path=path, format=fmt, columns=dict(zip(header, cols, strict=True)), lines=lines)


def _check_header(path: Path, header: list[str]) -> None:
    empty = [k + 1 for k, h in enumerate(header) if not h]
    if empty:
        raise DataError(f"{path}: line 1: header field {empty[0]} is empty (every column needs a name)")
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise DataError(f"{path}: line 1: header repeats column(s) {', '.join(dup)}")


def _read_jsonl(path: Path) -> RawTable:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    try:
        with _open_text(path) as fh:
            for k, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {k}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}: line {k}: expected a JSON object, got {type(obj).__name__}")
                rows.append(obj)
                lines.append(k)
    except UnicodeDecodeError as e:
        raise _decode_error(path, e) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    names: dict[str, None] = {}
    for obj in rows:
        names.update(dict.fromkeys(obj))
    columns = {n: [_json_cell(obj.get(n)) for obj in rows] for n in names}
    return RawTable(path=path, format="jsonl", columns=columns, lines=lines)


def _json_cell(v: Any) -> Any:
    if isinstance(v, str):
        v = v.strip()
        return v or None
    return v


def _read_parquet(path: Path) -> RawTable:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is a dependency of the train extra
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'mrdib[train]'): {e}") from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable Parquet file: {e}") from None
    header = [str(n) for n in table.column_names]
    _check_header(path, header)
    columns = {n: [_json_cell(v) for v in table.column(k).to_pylist()] for k, n in enumerate(header)}
    return RawTable(path=path, format="parquet", columns=columns, lines=list(range(1, table.num_rows + 1)))
