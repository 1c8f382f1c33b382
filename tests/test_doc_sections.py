"""Marked sections of the generated documents (mrdib/doc_sections.py): replace, append, refuse, serialise."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mrdib.doc_sections import replace_section


def test_append_replace_and_keep_the_rest(tmp_path: Path) -> None:
    doc = tmp_path / "docs" / "R.md"
    replace_section(doc, "experiment", "a", "first", header="# Results\n")
    doc.write_text(doc.read_text() + "\nhand-written analysis\n")
    replace_section(doc, "experiment", "b", "other", header="# Results\n")
    replace_section(doc, "experiment", "a", "second\n", header="# Results\n")
    text = doc.read_text()
    assert text.startswith("# Results\n") and "hand-written analysis" in text
    assert "second" in text and "first" not in text and "other" in text
    assert text.count("<!-- experiment:a -->") == 1 and text.count("<!-- /experiment:a -->") == 1


def test_end_marker_before_start_is_refused(tmp_path: Path) -> None:
    doc = tmp_path / "B.md"
    doc.write_text("<!-- /bench:x -->\n<!-- bench:x -->\n")
    with pytest.raises(ValueError, match="comes before"):
        replace_section(doc, "bench", "x", "body", header="")


def test_concurrent_writers_lose_no_section(tmp_path: Path) -> None:
    """Two jobs finishing at once must not drop each other's section (each read-modify-write is locked)."""
    doc = tmp_path / "R.md"

    def writer(k: int) -> None:
        for i in range(25):
            replace_section(doc, "experiment", f"s{k}", f"body {k} {i}", header="# Results\n")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = doc.read_text()
    for k in range(8):
        assert f"body {k} 24" in text, k
