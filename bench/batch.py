"""Batch benchmark: POST /recommend/batch against the same users sent one /recommend at a time, same run.

    python -m bench.batch [--artifacts ROOT] [--batch 256] [--rounds 5] [--no-write]

Both sides run in one process through the ASGI app (no sockets, no load generator: the figure is the service's
own cost, the least noisy measure on a shared machine), on a private redis-server (single mode, AOF off), over
one published artifact (`--artifacts`, default: bench.planted_artifact at ml-100k's shape). Scenarios:

- known users: user ids whose vectors are cached (the warm path: index search, no tower);
- histories: anonymous 20-item histories (one user-tower run each alone, one batched run in the batch).

users/s = users answered / wall seconds, median of `--rounds` rounds after one warm-up round; CPU us per user
from `time.process_time`. The answers of both sides are checked to be the same items before timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench._report import command, machine, md_table, now, write_section
from bench.serve import free_port

TARGET = 5.0


def scope(path: str, body: bytes) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}


async def call(app, path: str, payload: dict) -> dict:
    body = json.dumps(payload).encode()
    sent, status, chunks = False, [], []

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)

    async def send(msg):
        if msg["type"] == "http.response.start":
            status.append(msg["status"])
        elif msg["type"] == "http.response.body":
            chunks.append(msg.get("body", b""))

    await app(scope(path, body), receive, send)
    assert status and 200 <= status[0] < 300, (status, b"".join(chunks)[:300])
    return json.loads(b"".join(chunks))


async def one_by_one(app, reqs: list[dict]) -> list[dict]:
    return [await call(app, "/recommend", r) for r in reqs]


async def batched(app, reqs: list[dict], size: int) -> list[dict]:
    out = []
    for s in range(0, len(reqs), size):
        out += (await call(app, "/recommend/batch", {"requests": reqs[s:s + size]}))["results"]
    return out


async def timed(fn, rounds: int) -> tuple[float, float]:
    """(median wall s, median CPU s) of `rounds` runs of `fn()` after one warm-up run."""
    await fn()
    walls, cpus = [], []
    for _ in range(rounds):
        w, c = time.perf_counter(), time.process_time()
        await fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


async def measure(root: Path, redis_url: str, tmp: Path, size: int, rounds: int) -> list[dict]:
    from mrdib.artifact.store import current_version, load_artifact
    from service.api import create_app
    from service.settings import Settings

    art = load_artifact(root / current_version(root))
    rng = random.Random(0)
    users = rng.sample(list(art.user_ids), min(size, len(art.user_ids)))
    scenarios = {
        "known users (cached vectors)": [{"user_id": u, "k": 20} for u in users],
        "anonymous 20-item histories": [{"history": rng.sample(list(art.item_ids), 20), "k": 20}
                                        for _ in range(size)],
    }
    s = Settings(artifacts=root, redis_url=redis_url, redis_key_prefix="bb:", stream="bb:events",
                 wal_path=tmp / "wal.jsonl", poll_interval_s=0, cpu_threads=2, log_level="WARNING", max_batch=size)
    app = create_app(s)
    rows = []
    async with app.router.lifespan_context(app):
        for name, reqs in scenarios.items():
            alone, batch = await one_by_one(app, reqs), await batched(app, reqs, size)
            same = all([x["item_id"] for x in a["items"]] == [x["item_id"] for x in b["items"]]
                       for a, b in zip(alone, batch, strict=True))
            w1, c1 = await timed(lambda reqs=reqs: one_by_one(app, reqs), rounds)
            wb, cb = await timed(lambda reqs=reqs: batched(app, reqs, size), rounds)
            n = len(reqs)
            rows.append({"scenario": name, "users": n, "one_ups": n / w1, "batch_ups": n / wb,
                         "one_cpu_us": c1 / n * 1e6, "batch_cpu_us": cb / n * 1e6, "speedup": w1 / wb,
                         "same_answers": same})
            print(f"  {name}: one at a time {n / w1:,.0f} users/s ({c1 / n * 1e6:.0f} us CPU/user), batch of "
                  f"{size} {n / wb:,.0f} users/s ({cb / n * 1e6:.0f} us CPU/user): x{w1 / wb:.1f}; same answers: "
                  f"{same}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, default=None)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    started, mach, t0 = now(), machine(), time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="mrdib-bench-batch-"))
    port = free_port()
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        if a.artifacts:
            root, source = a.artifacts.resolve(), f"`{a.artifacts}`"
        else:
            from bench.planted_artifact import build_planted_artifact

            root = tmp / "artifacts"
            build_planted_artifact(root, n_items=1682, n_users=943, dim=64, n_clusters=19, history_len=20,
                                   max_history=50)
            source = "planted artifact of ml-100k's shape (bench.planted_artifact: 1,682 items, 943 users, d=64, Flat)"
        print(f"machine: {mach}\nartifact: {source}", flush=True)
        rows = asyncio.run(measure(root, f"redis://127.0.0.1:{port}/0", tmp, a.batch, a.rounds))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    verdict = [f"- {r['scenario']}: batch of {a.batch} = **{r['speedup']:.1f}x** the users/s of one request at a "
               f"time (target >= {TARGET:.0f}x: {'met' if r['speedup'] >= TARGET else 'MISSED'}); same answers: "
               f"{r['same_answers']}" for r in rows]
    print("\n".join(verdict))
    if a.no_write:
        return 0
    body = "\n".join([
        "## Batch: POST /recommend/batch vs one /recommend at a time",
        "",
        f"- command: `{command()}` ({time.monotonic() - t0:.0f} s)",
        f"- date: {started}; machine: {mach} (shared with other jobs: compare the two sides, not absolute figures)",
        f"- artifact: {source}; private redis-server (single mode); in-process over ASGI (no sockets), median of "
        f"{a.rounds} rounds after a warm-up; both sides answer the same users",
        "",
        "### Verdict",
        "",
        *verdict,
        "",
        md_table(["scenario", "users", "one at a time: users/s", "batch: users/s", "CPU us/user alone",
                  "CPU us/user batched", "speed-up"],
                 [(r["scenario"], str(r["users"]), f"{r['one_ups']:,.0f}", f"{r['batch_ups']:,.0f}",
                   f"{r['one_cpu_us']:.0f}", f"{r['batch_cpu_us']:.0f}", f"{r['speedup']:.1f}x") for r in rows]),
    ])
    write_section("batch", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
