"""training/data/tables.py: any cell a spreadsheet can export survives CSV quoting, and rows keep their file line."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from training.data.tables import read_table

cells = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), max_size=30)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(cells, min_size=3, max_size=3), min_size=1, max_size=8))
def test_csv_cells_round_trip_with_their_lines(rows: list[list[str]]) -> None:
    assume(any(c.strip() for r in rows for c in r))  # a file of blank rows has no data (a DataError, tested elsewhere)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["a", "b", "c"])
    w.writerows(rows)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "t.csv"
        f.write_text(buf.getvalue(), encoding="utf-8")
        table = read_table(f)
    kept = [r for r in rows if any(c.strip() for c in r)]  # rows of blanks only are blank lines
    assert table.n_rows == len(kept)
    for k, name in enumerate("abc"):
        assert table.columns[name] == [r[k].strip() or None for r in kept]
    # each row's line is where it starts: 1 (header) + the physical lines of the rows before it
    starts, line = [], 2
    for r in rows:
        if any(c.strip() for c in r):
            starts.append(line)
        line += 1 + sum(c.count("\n") for c in r)
    assert table.lines == starts
