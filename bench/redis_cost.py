"""Redis cost per user, per request and per event: memory and commands, measured on a private redis-server.

    python -m bench.redis_cost [--users 2000] [--events 10] [--no-write]

Through the real app in-process (ASGI, no sockets), on a planted ml-100k-shaped artifact: each of `--users` new
users gets `--events` events, then one /recommend (tower over the events, vector cached), then one more
/recommend (cache hit; near cache off, so it reads Redis). Between phases: `INFO memory` (used_memory) and
`INFO commandstats` (calls per command, including the commands run inside the Lua scripts) are read, so the
figures are: bytes of Redis memory per user (keys the layout keeps per user, events in the stream included),
commands per event, per cold and per warm /recommend. docs/SCALING.md scales them to its target.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from bench._report import command, machine, md_table, now, write_section
from bench.batch import call
from bench.serve import free_port


def stats(r: redis.Redis) -> tuple[int, dict[str, int]]:
    mem = int(r.info("memory")["used_memory"])
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in r.info("commandstats").items()}
    return mem, calls


def delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0) > 0 and k not in ("info", "ping", "cluster|info")}


async def run(root: Path, url: str, tmp: Path, users: int, events: int) -> dict:
    from mrdib.artifact.store import current_version, load_artifact
    from service.api import create_app
    from service.settings import Settings

    art = load_artifact(root / current_version(root))
    s = Settings(artifacts=root, redis_url=url, redis_key_prefix="rc:", stream="rc:events", wal_path=tmp / "w.jsonl",
                 poll_interval_s=0, cpu_threads=2, log_level="WARNING", near_cache_ttl_s=0, event_rate_per_s=0,
                 redis_socket_timeout_s=5, redis_connect_timeout_s=5)
    app = create_app(s)
    r = redis.Redis.from_url(url)
    ids = [f"visitor-{n:07d}" for n in range(users)]
    out: dict = {}
    async with app.router.lifespan_context(app):
        await asyncio.sleep(0.5)
        m0, c0 = stats(r)
        n_items = len(art.item_ids)
        for j, u in enumerate(ids):
            for e in range(events):
                await call(app, "/events", {"user_id": u, "item_id": art.item_ids[(13 * j + 7 * e) % n_items],
                                            "type": "click"})
        m1, c1 = stats(r)
        for u in ids:
            await call(app, "/recommend", {"user_id": u, "k": 20})
        m2, c2 = stats(r)
        for u in ids:
            await call(app, "/recommend", {"user_id": u, "k": 20})
        _, c3 = stats(r)
    n_ev = users * events
    out["events"] = {"bytes_per_event": (m1 - m0) / n_ev, "calls": {k: v / n_ev for k, v in delta(c0, c1).items()}}
    out["cold"] = {"bytes_per_user": (m2 - m1) / users, "calls": {k: v / users for k, v in delta(c1, c2).items()}}
    out["warm"] = {"calls": {k: v / users for k, v in delta(c2, c3).items()}}
    out["bytes_per_user_total"] = (m2 - m0) / users
    out["keys"] = r.dbsize()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--events", type=int, default=10)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    started, mach, t0 = now(), machine(), time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="mrdib-bench-rc-"))
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                             "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        from bench.planted_artifact import build_planted_artifact

        root = tmp / "artifacts"
        build_planted_artifact(root, n_items=1682, n_users=943, dim=64, n_clusters=19, history_len=20, max_history=50)
        res = asyncio.run(run(root, f"redis://127.0.0.1:{port}/0", tmp, a.users, a.events))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)

    def calls(d: dict) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))

    rows = [("per event (POST /events)", f"{res['events']['bytes_per_event']:.0f} B", calls(res["events"]["calls"])),
            ("per cold /recommend (tower over the events, vector cached)", f"{res['cold']['bytes_per_user']:.0f} B",
             calls(res["cold"]["calls"])),
            ("per warm /recommend (cached vector; near cache off)", "-", calls(res["warm"]["calls"]))]
    print(md_table(["what", "Redis memory", "Redis commands (calls per request; script bodies included)"], rows))
    print(f"memory per user with {a.events} events and a cached vector: {res['bytes_per_user_total']:.0f} B")
    if a.no_write:
        return 0
    write_section("redis_cost", "\n".join([
        "## Redis cost per user, request and event",
        "",
        f"- command: `{command()}` ({time.monotonic() - t0:.0f} s)",
        f"- date: {started}; machine: {mach}; redis-server 7 (single, AOF off), the service's own key layout",
        f"- {a.users:,} new users x {a.events} events, then one cold and one warm /recommend each (planted "
        "ml-100k-shaped artifact, d=64, history cap 50); memory = `used_memory` delta; commands = `INFO "
        "commandstats` delta (EVALSHA counts once, the commands inside the script count too)",
        "",
        md_table(["what", "Redis memory", "Redis commands (calls per request; script bodies included)"], rows),
        "",
        f"Memory per user with {a.events} events and a cached vector: **{res['bytes_per_user_total']:.0f} B** "
        f"({res['keys']:,} keys in all).",
    ]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
