"""Fast, strict parsing of small delimited text files (the MMRec `.inter` and id-mapping files).

Why not np.loadtxt / genfromtxt: they are 10-50x slower than splitting the decoded text once and
converting whole columns with numpy, and their error messages do not say which line is wrong.
Here the fast path converts columns in bulk; only when that fails do we walk the rows to name the
first offending line, so bad input costs time but good input does not.
"""

from __future__ import annotations

import re
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
    line_numbers: np.ndarray | None  # 1-based file line of each data row; None = row k is on line k + first_line
    first_line: int = 2

    @property
    def n_cols(self) -> int:
        return len(self.header)

    @property
    def n_rows(self) -> int:
        return len(self.cells) // self.n_cols if self.n_cols else 0

    def line_of(self, row: int) -> int:
        """1-based line number in the file of data row ``row``."""
        return int(self.line_numbers[row]) if self.line_numbers is not None else row + self.first_line

    def column(self, name: str) -> list[str]:
        return self.cells[self.header.index(name) :: self.n_cols]

    def int_column(self, name: str) -> np.ndarray:
        """int64 values of a column; integral floats such as "5.0" are accepted."""
        raw = self.column(name)
        try:
            return np.fromiter(map(int, raw), dtype=np.int64, count=len(raw))
        except (ValueError, OverflowError):
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
            values = np.fromiter(map(float, raw), dtype=np.float64, count=len(raw))
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


_WHITESPACE_LINE = re.compile(r"\n[ \t]+(\n|$)")


def _has_blank_line(body: str) -> bool:
    """Whether any line of ``body`` is empty or whitespace-only (cheap substring tests before the regex)."""
    if "\n\n" in body or not body.split("\n", 1)[0].strip():
        return True
    return ("\n " in body or "\n\t" in body) and _WHITESPACE_LINE.search(body) is not None


def parse_table(path: Path, text: str | None = None, names: list[str] | None = None) -> Table:
    """Parse a header-first table separated by tabs (else by commas if the header has one, else by whitespace).

    ``names``: the file has no header line; these are its column names (tab-separated then).
    Blank lines are skipped; line numbers in errors are those of the file.
    """
    if text is None:
        text = read_text(path)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    # Locate the first non-blank line (the header, or the first data row when ``names`` is given).
    pos, line_no = 0, 1
    while True:
        nl = text.find("\n", pos)
        end = nl if nl >= 0 else len(text)
        if text[pos:end].strip():
            break
        if nl < 0:
            raise DataError(f"{path}: file is empty")
        pos, line_no = nl + 1, line_no + 1
    sep: str | None
    if names is None:
        header_line = text[pos:end]
        sep = "\t" if "\t" in header_line else "," if "," in header_line else None
        header = [h.strip() for h in (header_line.split(sep) if sep else header_line.split())]
        body, first_line = (text[nl + 1 :] if nl >= 0 else ""), line_no + 1
    else:
        sep, header = "\t", list(names)
        body, first_line = text[pos:], line_no
    # Drop trailing blank lines (but not trailing empty fields of the last row).
    body = body.rstrip("\n")
    while body:
        last_nl = body.rfind("\n")
        if body[last_nl + 1 :].strip():
            break
        body = body[: max(last_nl, 0)].rstrip("\n")
    n_cols = len(header)
    line_numbers: np.ndarray | None = None
    if not body:
        return Table(path=path, header=header, cells=[], line_numbers=None, first_line=first_line)
    if _has_blank_line(body):  # rare: blank lines inside the data, so track each row's line
        lines = body.split("\n")
        keep = [k for k, ln in enumerate(lines) if ln.strip()]
        line_numbers = np.asarray(keep, dtype=np.int64) + first_line
        body = "\n".join(lines[k] for k in keep)
    n_rows = body.count("\n") + 1
    cells = body.replace("\n", sep).split(sep) if sep else body.split()
    if len(cells) != n_cols * n_rows:
        for k, ln in enumerate(body.split("\n")):
            got = len(ln.split(sep) if sep else ln.split())
            if got != n_cols:
                line = int(line_numbers[k]) if line_numbers is not None else k + first_line
                raise DataError(f"{path}: line {line}: expected {n_cols} fields (header {header}), found {got}")
    return Table(path=path, header=header, cells=cells, line_numbers=line_numbers, first_line=first_line)
