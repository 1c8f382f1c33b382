"""What the event path costs, before/after a change: the event Lua script in Redis and the service around it.

    python -m bench.event_cost [--ref REF] [--events 3000] [--rounds 5]

POST /events is driven in-process through the ASGI app (httpx's ASGI transport: no sockets, no wrk), against a
private redis-server with AOF (`appendfsync everysec`), for the `service` package as committed at REF (default
`main`, extracted with `git archive`) and for the working tree, in the same run, alternating round by round.
Per variant and concurrency (1 = one event at a time; 32 = group commit batches): durable events/s (wall), the
service's CPU per event (`time.process_time`), and Redis's own microseconds per script call (`INFO
commandstats`, `evalsha`). Events cycle over 500 users with unique ids, within the default per-user rate limit
(the limit's bucket is updated, never exhausted). Written to docs/BENCHMARKS.md (section `events`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._report import REPO, command, machine, md_table, now, write_section
from bench.serve import RedisServer, git_service_copy

USERS = 500

# Runs in a subprocess whose PYTHONPATH selects the `service` package measured.
_CHILD = r"""
import asyncio, json, sys, time
import httpx
from service.api import create_app
from service.settings import Settings

url, prefix, wal, round_no = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[6]
n, conc = int(sys.argv[4]), int(sys.argv[5])

async def main():
    s = Settings(artifacts=wal + ".no-artifacts", redis_url=url, redis_key_prefix=prefix, stream=prefix + "events",
                 wal_path=wal, poll_interval_s=0, cpu_threads=1, log_level="WARNING")
    app = create_app(s)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as c:
            sem = asyncio.Semaphore(conc)
            bad = 0
            async def one(i):
                nonlocal bad
                async with sem:
                    r = await c.post("/events", json={"user_id": f"u{i % %USERS%}", "item_id": f"i{i % 97}",
                                                      "type": "click", "event_id": f"{round_no}-{i}"})
                    bad += r.status_code != 202
            await asyncio.gather(*(one(i) for i in range(50)))  # warm-up (not counted)
            t0, c0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*(one(i) for i in range(50, 50 + n)))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"wall": wall, "cpu": cpu, "bad": bad}))

asyncio.run(main())
""".replace("%USERS%", str(USERS))


def _evalsha_usec(rs: RedisServer) -> tuple[int, float]:
    stats = rs.client.info("commandstats")
    e = stats.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    return int(e["calls"]), float(e["usec"])


def run_variant(path: Path, rs: RedisServer, tmp: Path, n: int, conc: int, round_no: str) -> dict:
    prefix = f"ev-{round_no}:"
    before = _evalsha_usec(rs)
    env = {**os.environ, "PYTHONPATH": f"{path}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _CHILD, rs.url, prefix, str(tmp / f"wal-{round_no}.jsonl"), str(n),
                        str(conc), round_no], cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"measurement failed ({path}): {r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    after = _evalsha_usec(rs)
    calls = after[0] - before[0]
    out["redis_us_per_call"] = (after[1] - before[1]) / max(calls, 1)
    out["script_calls"] = calls
    for key in rs.client.scan_iter(match=prefix + "*", count=1000):
        rs.client.delete(key)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", default="main", help="git ref of the baseline `service` package")
    ap.add_argument("--events", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--conc", default="1,32", help="concurrencies, comma-separated")
    a = ap.parse_args(argv)
    started, mach = now(), machine()
    ref_sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", a.ref], capture_output=True,
                             text=True, check=True).stdout.strip()
    results: dict[str, dict[int, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="mrdib-event-cost-") as t:
        tmp = Path(t)
        variants = {f"service @ {a.ref} ({ref_sha})": git_service_copy(a.ref, tmp / "ref"), "working tree": REPO}
        rs = RedisServer()
        try:
            for conc in (int(x) for x in a.conc.split(",")):
                for rnd in range(a.rounds):
                    for label, path in variants.items():  # alternate: drift of the shared machine hits both
                        res = run_variant(path, rs, tmp, a.events, conc, f"{conc}-{rnd}-{len(results)}-{label[:3]}")
                        results.setdefault(label, {}).setdefault(conc, []).append(res)
                        print(label, conc, rnd, res, flush=True)
        finally:
            rs.close()
    rows = []
    for label, by_conc in results.items():
        for conc, rs_ in by_conc.items():
            eps = statistics.median(a.events / r["wall"] for r in rs_)
            cpu = statistics.median(1e6 * r["cpu"] / a.events for r in rs_)
            red = statistics.median(r["redis_us_per_call"] for r in rs_)
            bad = sum(r["bad"] for r in rs_)
            rows.append([label, str(conc), f"{eps:,.0f}", f"{cpu:.0f}", f"{red:.1f}", str(bad)])
    body = "\n".join([
        "## Event ingestion cost: the event script and the service around it, before/after",
        "",
        f"- command: `{command()}`; date: {started}; machine: {mach} (shared with other engineers' work: compare "
        "rows of one run only)",
        f"- {a.events:,} events per round over {USERS} users, medians of {a.rounds} rounds, variants alternated; "
        "in-process ASGI, private redis-server with AOF everysec",
        "",
        md_table(["service", "concurrency", "durable events/s", "service CPU us/event", "Redis us per script call",
                  "non-202"], rows),
        "",
        "```json",
        json.dumps({k: {str(c): v for c, v in d.items()} for k, d in results.items()}),
        "```",
    ])
    write_section("events", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
