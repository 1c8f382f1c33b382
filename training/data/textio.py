"""Fast, strict parsing of small delimited text files (the MMRec `.inter` and id-mapping files).

Why not np.loadtxt / genfromtxt: they are 10-50x slower than splitting the decoded text once and
converting whole columns with numpy, and their error messages do not say which line is wrong.
Here the fast path converts columns in bulk; only when that fails do we walk the rows to name the
first offending line, so bad input costs time but good input does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.dataset import DataError


@dataclass(frozen=True)
class Table:
    """A parsed delimited file: header names and the raw string cells of every data row."""

    path: Path
    header: list[str]
    cells: list[str]  # row-major, len = n_rows * n_cols
    line_numbers: np.ndarray | None  # 1-based file line of each data row; None = row k is on line k + 2

    @property
    def n_cols(self) -> int:
        return len(self.header)

    @property
    def n_rows(self) -> int:
        return len(self.cells) // self.n_cols if self.n_cols else 0

    def line_of(self, row: int) -> int:
        """1-based line number in the file of data row ``row``."""
        return int(self.line_numbers[row]) if self.line_numbers is not None else row + 2

    def column(self, name: str) -> list[str]:
        return self.cells[self.header.index(name) :: self.n_cols]

    def int_column(self, name: str) -> np.ndarray:
        """int64 values of a column; integral floats such as "5.0" are accepted."""
        raw = self.column(name)
        try:
            return np.array(raw).astype(np.int64) if raw else np.zeros(0, dtype=np.int64)
        except ValueError:
            pass
        values = self.float_column(name)
        bad = np.flatnonzero(values != np.round(values))
        if len(bad):
            r = int(bad[0])
            raise DataError(
                f"{self.path}: line {self.line_of(r)}: column {name!r} must be an integer, got {raw[r]!r}"
            )
        return values.astype(np.int64)

    def float_column(self, name: str) -> np.ndarray:
        """float64 values of a column; a non-numeric cell is reported with its line."""
        raw = self.column(name)
        try:
            values = np.array(raw, dtype=np.float64) if raw else np.zeros(0, dtype=np.float64)
        except ValueError:
            for r, cell in enumerate(raw):
                try:
                    float(cell)
                except ValueError:
                    raise DataError(
                        f"{self.path}: line {self.line_of(r)}: column {name!r} is not a number: {cell!r}"
                    ) from None
            raise  # pragma: no cover - numpy and float() disagree only on exotic input
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            r = int(bad[0])
            raise DataError(f"{self.path}: line {self.line_of(r)}: column {name!r} is not finite: {raw[r]!r}")
        return values


def read_text(path: Path) -> str:
    """Whole file as text; non-UTF-8 bytes and empty files are DataErrors naming the line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    if not data.strip():
        raise DataError(f"{path}: file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "re-encode the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def parse_table(path: Path, text: str | None = None) -> Table:
    """Parse a header-first table separated by tabs (or, if the header has no tab, by whitespace)."""
    if text is None:
        text = read_text(path)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    first = 0
    while first < len(lines) and not lines[first].strip():
        first += 1
    if first >= len(lines):
        raise DataError(f"{path}: file is empty")
    header_line = lines[first]
    sep: str | None = "\t" if "\t" in header_line else None
    header = [h.strip() for h in (header_line.split(sep) if sep else header_line.split())]
    body = lines[first + 1 :]
    line_numbers: np.ndarray | None = None
    if first or any(not ln.strip() for ln in body):
        keep = [k for k, ln in enumerate(body) if ln.strip()]
        line_numbers = np.asarray(keep, dtype=np.int64) + first + 2
        body = [body[k] for k in keep]
    n_cols = len(header)
    cells = (sep.join(body).split(sep) if sep else " ".join(body).split()) if body else []
    if len(cells) != n_cols * len(body):
        for k, ln in enumerate(body):
            got = len(ln.split(sep) if sep else ln.split())
            if got != n_cols:
                line = int(line_numbers[k]) if line_numbers is not None else k + first + 2
                raise DataError(f"{path}: line {line}: expected {n_cols} fields (header {header}), found {got}")
    return Table(path=path, header=header, cells=cells, line_numbers=line_numbers)
