"""Run the fault and abuse tests and write their figures into docs/BENCHMARKS.md (section `fault`).

    python -m bench.fault_report [-- extra pytest args]

The tests themselves (tests/test_fault_*.py) run in CI as ordinary tests; when MRDIB_FAULT_REPORT_DIR is set
they also write what they did (load held, faults injected, requests sent, failures) as JSON. This script
sets it, runs them once, reads those files and pytest's JUnit XML (outcome and time of every test), and
writes the section. A failing test is reported as failing, with its message; the script then exits 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from bench._report import REPO, command, machine, md_table, now, write_section


def main(argv: list[str] | None = None) -> int:
    extra = list(argv if argv is not None else sys.argv[1:])
    if extra[:1] == ["--"]:
        extra = extra[1:]
    started, mach, t0 = now(), machine(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mrdib-fault-") as tmp:
        junit = Path(tmp) / "junit.xml"
        env = {**os.environ, "MRDIB_FAULT_REPORT_DIR": str(Path(tmp) / "figures")}
        files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_fault_*.py"))
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                               *files, *extra], cwd=REPO, env=env, capture_output=True, text=True)
        print(proc.stdout[-3000:])
        figures = [json.loads(p.read_text()) for p in sorted((Path(tmp) / "figures").glob("*.json"))]
        cases = []
        if junit.exists():
            for tc in ET.parse(junit).getroot().iter("testcase"):
                bad = tc.find("failure") if tc.find("failure") is not None else tc.find("error")
                skipped = tc.find("skipped")
                outcome = "failed" if bad is not None else ("skipped" if skipped is not None else "passed")
                msg = (bad.get("message") or "")[:160] if bad is not None else ""
                cases.append((tc.get("classname", "").rsplit(".", 1)[-1], tc.get("name", ""), outcome,
                              float(tc.get("time", 0)), msg))
    elapsed = time.monotonic() - t0
    by_file: dict[str, list] = {}
    for c in cases:
        by_file.setdefault(c[0], []).append(c)
    summary = [[f, str(len(cs)), str(sum(c[2] == "passed" for c in cs)), str(sum(c[2] == "failed" for c in cs)),
                str(sum(c[2] == "skipped" for c in cs)), f"{sum(c[3] for c in cs):.1f}"] for f, cs in by_file.items()]
    fig_rows = []
    for f in figures:
        rest = {k: v for k, v in f.items() if k not in ("test", "load", "faults", "requests", "failures", "covers")}
        fig_rows.append([f["test"], f.get("covers", ""), f.get("load", ""), f.get("faults", ""),
                         f"{f.get('requests', 0):,}", str(f.get("failures", "")),
                         ", ".join(f"{k}={v}" for k, v in rest.items())])
    failed = [c for c in cases if c[2] == "failed"]
    body = "\n".join([
        "## Fault and abuse tests (tests/test_fault_*.py)",
        "",
        f"- command: `{command()}` ({elapsed:.0f} s); date: {started}; machine: {mach}",
        f"- pytest exit code {proc.returncode}: {len(cases)} tests, {len(failed)} failed",
        "",
        md_table(["file", "tests", "passed", "failed", "skipped", "seconds"], summary),
        "",
        "### What each scenario held and injected",
        "",
        "`covers`: the finding of an issue each scenario guards (13.n = item n of issue 13, security and hardening).",
        "",
        md_table(["scenario", "covers", "load held", "faults injected", "requests", "failures", "other figures"],
                 fig_rows),
        *(["", "### Failures", ""] + [f"- `{c[0]}::{c[1]}`: {c[4]}" for c in failed] if failed else []),
    ])
    write_section("fault", body)
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
