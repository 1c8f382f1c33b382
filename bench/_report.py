"""Shared plumbing of the benchmarks: machine description, markdown tables, the BENCHMARKS.md section writer.

Several benchmarks (and the fault-test report) share docs/BENCHMARKS.md; each owns only the text between
`<!-- bench:NAME -->` and `<!-- /bench:NAME -->`, so a run of one never touches another's results. The
rewrite happens under an flock so two benchmarks finishing at once cannot lose each other's section.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from mrdib.doc_sections import replace_section

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "BENCHMARKS.md"
PLOTS = REPO / "docs" / "bench"

_HEADER = """# Benchmarks

Produced by the scripts in `bench/`; each section below is rewritten by its own command (the text between
its `<!-- bench:NAME -->` markers) and says on which machine, when and how it was measured. The machines are
shared and noisy: speed claims are ratios to a baseline measured in the same run, or medians with spread.
"""


def machine() -> str:
    """One line: CPU model and count (lscpu), memory, load average at the time of the run, Python."""
    model, cpus = platform.processor() or "unknown CPU", str(os.cpu_count())
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = fields.get("Model name", model).strip()
        cpus = fields.get("CPU(s)", cpus).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    mem = ""
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        mem = f", {int(m.group(1)) / 2**20:.0f} GiB RAM" if m else ""
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load average {:.1f}/{:.1f}/{:.1f} at start".format(*os.getloadavg())
    return f"{model}, {cpus} CPUs{mem}{load}; Python {platform.python_version()}"


def command() -> str:
    """The command line that produced the results, as the user would type it."""
    argv = sys.argv[:]
    if argv and argv[0].endswith(".py") and "/bench/" in argv[0].replace("\\", "/"):
        mod = "bench." + Path(argv[0]).stem
        return "python -m " + " ".join([mod, *map(shlex.quote, argv[1:])])
    return " ".join(map(shlex.quote, ["python", *argv]))


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats are expected pre-formatted by the caller (str)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """The same table aligned for a terminal."""
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_section(name: str, body: str, doc: Path = DOC) -> Path:
    """Replace the text between this benchmark's markers (append the section when it is new)."""
    if not re.fullmatch(r"[a-z0-9_-]+", name):
        raise ValueError(f"section name {name!r}: use lower-case letters, digits, '-' or '_'")
    return replace_section(doc, "bench", name, body, header=_HEADER)


def section_json(name: str, doc: Path = DOC) -> tuple[str, object]:
    """(section text, parsed raw JSON block) of `<!-- bench:NAME -->`, for re-rendering a report without
    measuring again. ValueError names the file and what is missing."""
    import json

    text = doc.read_text(encoding="utf-8")
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    if start not in text or end not in text:
        raise ValueError(f"{doc}: no {name} section ({start} ... {end}) to re-render")
    sec = text[text.index(start) : text.index(end)]
    m = re.search(r"```json\n(.*?)\n```", sec, re.S)
    if m is None:
        raise ValueError(f"{doc}: the {name} section has no raw JSON block")
    return sec, json.loads(m.group(1))


def pct(xs: Sequence[float], q: float) -> float:
    """Percentile by linear interpolation (q in 0..100), without numpy (the load generator stays light)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median_spread(xs: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) of repeated measurements."""
    return statistics.median(xs), min(xs), max(xs)
