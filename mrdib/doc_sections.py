"""Marked sections of the generated documents (docs/RESULTS.md, docs/BENCHMARKS.md).

Each experiment or benchmark owns the text between `<!-- KIND:NAME -->` and `<!-- /KIND:NAME -->` and rewrites
only that; everything else in the file (other sections, hand-written analysis) is kept. Writers serialise on a
lock file next to the document, because two long jobs finishing at once would otherwise each write the file
they read and one section would be lost; the new text replaces the file atomically.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def replace_section(doc: Path, kind: str, name: str, body: str, header: str) -> Path:
    """Put `body` between the markers of (kind, name) in `doc`, appending the section when it is new.

    `header` starts a document that does not exist yet. ValueError when the end marker precedes the start.
    """
    start, end = f"<!-- {kind}:{name} -->", f"<!-- /{kind}:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    doc.parent.mkdir(parents=True, exist_ok=True)
    with open(doc.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = doc.read_text(encoding="utf-8") if doc.exists() else header
        if start in text and end in text:
            i, j = text.index(start), text.index(end) + len(end)
            if j < i:
                raise ValueError(f"{doc}: marker {end} comes before {start}; fix the file by hand")
            text = text[:i] + block + text[j:]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        tmp = doc.with_name(f"{doc.name}.tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(doc)
    return doc
