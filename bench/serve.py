"""Serving benchmark: the real service under wrk, against a bare FastAPI baseline measured in the same run.

    python -m bench.serve [--workers 2] [--duration 3] [--conns 1,8,32,128] [--artifacts ROOT]
                          [--compare-ref HEAD] [--profile]

- The service runs as a SUBPROCESS (`uvicorn --factory service.api:create_app --workers N`) over one
  published artifact: `--artifacts ROOT` (e.g. what `mrdib train` + export published) or, by default, a
  planted (hand-made, untrained) artifact of ml-100k's shape from `bench.planted_artifact` (1,682 items, 943
  users, d=64; planted clusters, mean-pooling user tower), stated in the report.
- Redis: a private `redis-server` on its own loopback port with `appendonly yes` + `appendfsync everysec`
  (events are also measured with `appendfsync always`, set at runtime with CONFIG SET).
- Load: `wrk` (Debian package) in its own process, one Lua script per scenario (POST bodies, unique event
  ids); each cell is `--duration` seconds after a 1 s warm-up of the scenario.
- Scenarios: bare baseline, known user warm cache, known user cold cache (943 users cycled while a flusher
  thread deletes the cached vectors every 100 ms; the measured Redis hit ratio is reported), anonymous user
  with a 20-item history, similar items, event ingestion (202 count checked against XLEN of the stream).
- `--compare-ref REF` also runs the warm scenario on the service package as committed at REF (`git archive`,
  nothing in the working tree changes), so a performance change is measured before/after in one run.
- `--profile` samples the warm path with py-spy (one worker) and reports where the time goes.
- Handler CPU (always): the warm request driven in-process through the ASGI app (no sockets, no wrk), CPU
  time per request (`time.process_time`, medians of 5 rounds) for the bare app, the working tree and, with
  `--compare-ref`, the service at REF -- far less noisy than wrk throughput on a shared, loaded machine. The
  apps take turns (`--cpu-rounds` rounds of bare, tree, ref) and each app's median is reported, so that a drift
  of the machine's load hits all of them alike.
- Alternated pairs (`--pairs N`, default 3): the bare app and the service run side by side and wrk drives them in
  turn at 32 connections (bare, warm, bare, warm, ...); the verdict takes the median of the pairs' ratios, and
  also of their server CPU per request (the uvicorn processes' user + system time from /proc over the cell, per
  request: what the throughput ratio is when the server is CPU-bound, whatever else runs on the machine). One
  sequential sweep on a machine shared with other work measured the same code at 47% and 61% of bare minutes
  apart (docs/BENCHMARKS.md): a single cell per side cannot carry a ratio target.

Targets: warm /recommend >= 65% of the bare route's throughput at 32 connections (issue 14; 50% before) with
p99 < 4x its p50; handler CPU per warm /recommend <= 2x the bare app's (issue 14); event ingestion >= 2,000
durable events/s with Redis AOF on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import redis

from bench._report import PLOTS, REPO, command, machine, md_table, now, text_table, write_section
from mrdib.artifact.store import LoadedArtifact
from mrdib.redis_keys import KeyLayout

TARGET_RATIO = 0.65
TARGET_TAIL = 4.0
TARGET_CPU = 2.0
TARGET_EVENTS = 2000.0


# --- processes ------------------------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """Private redis-server with AOF (appendfsync everysec) in a temp dir."""

    def __init__(self, fsync: str = "everysec"):
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mrdib-bench-redis-"))
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes", "--appendfsync", fsync], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise SystemExit("private redis-server did not start") from None
                time.sleep(0.05)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Server:
    """uvicorn in a subprocess over an app factory; PYTHONPATH picks which `service` package is served."""

    def __init__(self, factory: str, workers: int, env: dict[str, str], pythonpath: Path = REPO,
                 multiproc_metrics: bool | None = None):
        """`multiproc_metrics`: prometheus_client's multiprocess mode, as `mrdib serve --workers N` sets it up
        (default: on when workers > 1, so the bench measures what production runs)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **env, "PYTHONPATH": f"{pythonpath}{os.pathsep}{REPO}",
               "OMP_NUM_THREADS": "1", "MRDIB_LOG_LEVEL": "WARNING"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.metrics_dir: str | None = None
        if multiproc_metrics if multiproc_metrics is not None else workers > 1:
            self.metrics_dir = env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mrdib-bench-metrics-")
        self.log = tempfile.NamedTemporaryFile(prefix="mrdib-bench-uvicorn-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(workers), "--log-level", "warning", "--no-access-log"],
            cwd=pythonpath, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{factory} did not start; log: {Path(self.log.name).read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(0.5 * workers)  # every worker up, not only the first to answer

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)
        if self.metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)


@contextlib.contextmanager
def serving(factory: str, workers: int, env: dict[str, str], pythonpath: Path = REPO,
            multiproc_metrics: bool | None = None) -> Iterator[Server]:
    s = Server(factory, workers, env, pythonpath, multiproc_metrics)
    try:
        yield s
    finally:
        s.close()


# --- load generation ----------------------------------------------------------------------------------

_LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50":%d,"p95":%d,"p99":%d,"max":%d}\n', summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max))
end
"""


def lua_list(xs: list[str]) -> str:
    return "{" + ",".join("[==[" + x + "]==]" for x in xs) + "}"


def lua_script(kind: str, *, bodies: list[str] | None = None, paths: list[str] | None = None, run_id: str = "",
               users: list[str] | None = None, items: list[str] | None = None) -> str:
    """One wrk script. `kind`: post (cycle through `bodies`), get (cycle through `paths`), events (unique ids)."""
    head = """
local threads = {}
setup = function(thread) table.insert(threads, thread); thread:set("tid", #threads) end
init = function(args) counter = 0; nonce = args[1] or "0" end
"""
    if kind == "post":
        body = f"""
local bodies = {lua_list(bodies or [])}
local headers = {{["Content-Type"] = "application/json"}}
request = function()
  counter = counter + 1
  local i = ((tid - 1) * 7919 + counter) % #bodies + 1
  return wrk.format("POST", "/recommend", headers, bodies[i])
end
"""
    elif kind == "get":
        body = f"""
local paths = {lua_list(paths or [])}
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[((tid - 1) * 7919 + counter) % #paths + 1])
end
"""
    elif kind == "events":
        # ids are JSON-encoded here once, so that any external id (quotes, unicode) makes a valid body
        body = f"""
local users = {lua_list([json.dumps(u) for u in users or []])}
local items = {lua_list([json.dumps(i) for i in items or []])}
local headers = {{["Content-Type"] = "application/json"}}
request = function()
  counter = counter + 1
  local b = string.format('{{"user_id":%s,"item_id":%s,"type":"click","event_id":"{run_id}-%s-%d-%d"}}',
    users[(counter * 31 + tid) % #users + 1], items[(counter * 17 + tid * 5) % #items + 1], nonce, tid, counter)
  return wrk.format("POST", "/events", headers, b)
end
"""
    else:
        raise ValueError(kind)
    return head + body + _LUA_DONE


@dataclass
class Cell:
    scenario: str
    conns: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    non2xx: int
    socket_errors: int
    note: str = ""


_NONCE = iter(range(1, 1 << 30))


def wrk(url: str, script: Path, conns: int, duration: float) -> dict:
    """One wrk run; a fresh nonce per run keeps generated event ids unique across runs (they are deduped)."""
    threads = max(1, min(2, conns))
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{max(1, round(duration))}s", "--timeout", "5s",
           "-s", str(script), url, "--", str(next(_NONCE))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[8:])
    raise RuntimeError(f"wrk gave no result: {out.stdout[-500:]} {out.stderr[-500:]}")


def measure(scenario: str, url: str, script: Path, conns: int, duration: float, note: str = "") -> Cell:
    r = wrk(url, script, conns, duration)
    secs = r["duration_us"] / 1e6
    errs = r["connect"] + r["read"] + r["write"] + r["timeout"]
    ok = r["requests"] - r["status"]
    c = Cell(scenario, conns, ok / secs, r["p50"] / 1e3, r["p95"] / 1e3, r["p99"] / 1e3, r["max"] / 1e3,
             r["requests"], r["status"], errs, note)
    print(f"  {scenario:<26} c={conns:<4} {c.rps:8.0f} req/s  p50 {c.p50_ms:7.2f}  p95 {c.p95_ms:7.2f}  "
          f"p99 {c.p99_ms:7.2f} ms  non-2xx {c.non2xx}  socket errors {errs}", flush=True)
    return c


def sweep(scenario: str, url: str, script: Path, conns: list[int], duration: float,
          hook=None) -> list[Cell]:
    wrk(url, script, 8, 1.0)  # warm-up, not recorded
    cells = []
    for c in conns:
        before = hook() if hook else None
        cell = measure(scenario, url, script, c, duration)
        if hook:
            cell.note = hook(before, cell)
        cells.append(cell)
    return cells


def server_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a uvicorn process and its worker processes (Linux /proc). Per
    request, it is what the server costs under real load, whatever share of the cores the machine leaves it."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def cpu_per_request(cell: Cell) -> float | None:
    """The server CPU us/request a pair cell's note carries."""
    m = re.search(r"server CPU (\d+) us/request", cell.note)
    return float(m.group(1)) if m else None


# --- scenarios -------------------------------------------------------------------------------------

@dataclass
class Workload:
    """The served artifact's external ids (requests name real users and items) and where scripts go."""

    user_ids: list[str]
    item_ids: list[str]
    dir: Path
    run_id: str

    @classmethod
    def of(cls, art: LoadedArtifact, dir: Path, run_id: str) -> Workload:
        return cls(list(art.user_ids), list(art.item_ids), dir, run_id)

    def script(self, name: str, text: str) -> Path:
        p = self.dir / f"{name}.lua"
        p.write_text(text)
        return p


def make_scripts(w: Workload, warm_users: int) -> dict[str, Path]:
    rng = random.Random(0)
    users = list(w.user_ids)
    rng.shuffle(users)
    items = w.item_ids
    return {
        "bare": w.script("bare", lua_script("post", bodies=[json.dumps({"user_id": users[0]})])),
        "warm": w.script("warm", lua_script("post", bodies=[json.dumps({"user_id": u}) for u in users[:warm_users]])),
        "cold": w.script("cold", lua_script("post", bodies=[json.dumps({"user_id": u}) for u in users])),
        "anon": w.script("anon", lua_script("post", bodies=[
            json.dumps({"history": rng.sample(items, 20)}) for _ in range(500)])),
        "similar": w.script("similar", lua_script("get", paths=[f"/items/{quote(rng.choice(items), safe='')}/similar"
                                                                "?k=20" for _ in range(500)])),
        "events": w.script("events", lua_script("events", run_id=w.run_id, users=users, items=items)),
    }


class Flusher:
    """Deletes every cached user vector every `period` s, so that the 'cold' scenario really misses. Each deleted
    user is also PUBLISHed on the service's invalidation channel (as the event script does), so that the
    workers' near caches drop it too: otherwise 'cold' would be served from the near cache."""

    # Keys are `<prefix>{u<shard>}:uvec:<user>` (mrdib/redis_keys.py): the user id follows the first ":uvec:".
    LUA = ("local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1] .. '*:uvec:*')) do "
           "local _, e = string.find(k, ':uvec:', 1, true) "
           "redis.call('UNLINK', k) redis.call('PUBLISH', ARGV[2], string.sub(k, e + 1)) n = n + 1 end return n")

    def __init__(self, client: redis.Redis, key_prefix: str, channel: str, period: float = 0.1):
        """`key_prefix`: the service's key prefix, e.g. "bench123:"; `channel`: the service's invalidation channel."""
        self.client, self.pattern, self.channel, self.period = client, key_prefix, channel, period
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(self.period):
            self.client.eval(self.LUA, 0, self.pattern, self.channel)

    def __enter__(self) -> Flusher:
        self.client.eval(self.LUA, 0, self.pattern, self.channel)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def hit_ratio_hook(client: redis.Redis):
    """Cell note: Redis keyspace hits per request. The users of these scenarios have no recent-event list, so a
    hit is a cached vector read from Redis; warm requests served by a worker's near cache do not touch Redis."""

    def hook(before=None, cell: Cell | None = None):
        stats = client.info("stats")
        if cell is None:
            return stats["keyspace_hits"]
        hits = stats["keyspace_hits"] - before
        return f"Redis hits {hits / max(cell.requests, 1):.0%}/request (rest: none or near cache)"

    return hook


def events_hook(client: redis.Redis, stream: str, wal: Path):
    """Cell note: events in the stream (XLEN delta) vs 202 answers wrk read.

    An event the service could not hand to Redis in time (pool exhausted, timeout) is made durable in the
    WAL instead and replayed by the service a moment later, so both counts are read only once the WAL is
    empty again (at most 60 s); how many took that path is part of the note."""

    def wal_lines() -> int:
        try:
            return sum(1 for line in wal.read_text(encoding="utf-8").splitlines() if line.strip())
        except FileNotFoundError:
            return 0

    def drained() -> int:
        deadline = time.monotonic() + 60
        while wal_lines() and time.monotonic() < deadline:
            time.sleep(0.2)
        return sum(client.xlen(key) for key in KeyLayout(stream=stream).streams())  # every shard's stream

    def hook(before=None, cell: Cell | None = None):
        if cell is None:
            return drained()
        via_wal = wal_lines()
        accepted, added = cell.requests - cell.non2xx, drained() - before
        wal_note = f"; {via_wal} were in the WAL at cell end, replayed since" if via_wal else ""
        # More in the stream than answered is expected: wrk stops reading at the end of the cell while the
        # service is still accepting the requests in flight. Fewer would be a lost acknowledged event.
        if added < accepted:
            return f"stream +{added} for {accepted} accepted: LOST {accepted - added}{wal_note}"
        return (f"stream +{added} for {accepted} accepted (none lost; {added - accepted} cut off by wrk at cell "
                f"end{wal_note})")

    return hook


def service_env(root: Path, rs: RedisServer, tmp: Path, prefix: str) -> dict[str, str]:
    return {"MRDIB_ARTIFACTS": str(root), "REDIS_URL": rs.url, "MRDIB_REDIS_KEY_PREFIX": prefix,
            "MRDIB_STREAM": f"{prefix}events", "MRDIB_WAL_PATH": str(tmp / "wal.jsonl"),
            "MRDIB_POLL_INTERVAL_S": "0", "MRDIB_CPU_THREADS": "2",
            # The per-user event limit stays on (its cost is measured) but never trips: wrk sends thousands of
            # events per second over a few hundred users, far beyond what the default allows one user.
            "MRDIB_EVENT_RATE_PER_S": "1000000", "MRDIB_EVENT_BURST": "1000000"}


def prewarm(url: str, script_users: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        for _ in range(2):  # twice: the second pass confirms the vectors are cached
            for u in script_users:
                r = c.post("/recommend", json={"user_id": u})
                r.raise_for_status()
                if r.json()["source"] != "user":  # a 'warm' scenario over unknown users would measure the fallback
                    raise SystemExit(f"warm-up: user {u!r} is not served from its user vector: {r.json()['source']}")


def warm_users_of(script: Path) -> list[str]:
    text = script.read_text()
    return [json.loads(b)["user_id"] for b in text.split("[==[")[1:] for b in [b.split("]==]")[0]]]


# --- profiling -------------------------------------------------------------------------------------

def profile(url: str, pid: int, script: Path, seconds: float, out: Path) -> list[tuple[str, float, float]]:
    """py-spy over the server while wrk drives the warm path; (function, inclusive %, self %) top list."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = out.with_suffix(".txt")
    spy = subprocess.Popen([exe, "record", "--pid", str(pid), "--subprocesses", "--duration", str(int(seconds)),
                            "--rate", "200", "--format", "raw", "--output", str(raw), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    wrk(url, script, 32, seconds - 1.5)
    _, err = spy.communicate(timeout=seconds + 60)
    if not raw.exists():
        print(f"py-spy failed: {err[-500:]}")
        return []
    incl, self_, total = Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        count = int(n)
        total += count
        for f in set(frames):
            incl[f] += count
        self_[frames[-1]] += count
    idle = sum(c for f, c in self_.items() if f.startswith(("select (selectors", "poll (selectors", "_worker (thread",
                                                             "wait (threading", "_run_once (base_events")))
    rows = [(f, 100 * c / total, 100 * self_[f] / total) for f, c in incl.most_common(60)]
    print(f"  py-spy: {total} samples, idle (selector/thread waits) {100 * idle / max(total, 1):.0f}%")
    return rows


# --- in-process handler CPU -------------------------------------------------------------------------

_INPROC = r"""
import asyncio, json, statistics, sys, time
root, redis_url, prefix, wal, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
users = json.loads(sys.argv[6])

def scope_for(body):
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/recommend", "raw_path": b"/recommend", "query_string": b"", "root_path": "",
            "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}

async def call(app, body):
    sent = False
    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
    status = []
    async def send(msg):
        if msg["type"] == "http.response.start":
            status.append(msg["status"])
    await app(scope_for(body), receive, send)
    assert status == [200], status

async def rounds(app, bodies):
    for b in bodies * 2:
        await call(app, b)
    out = []
    for _ in range(5):
        t0 = time.process_time()
        for i in range(n):
            await call(app, bodies[i % len(bodies)])
        out.append((time.process_time() - t0) / n * 1e6)
    return statistics.median(out)

async def main():
    bodies = [json.dumps({"user_id": u}).encode() for u in users]
    if root == "bare":
        from bench.bare_app import create_app
        print(json.dumps({"cpu_us": await rounds(create_app(), bodies)}))
        return
    from service.api import create_app
    from service.settings import Settings
    s = Settings(artifacts=root, redis_url=redis_url, redis_key_prefix=prefix, stream=prefix + "events",
                 wal_path=wal, poll_interval_s=0, cpu_threads=2, log_level="WARNING")
    app = create_app(s)
    async with app.router.lifespan_context(app):
        print(json.dumps({"cpu_us": await rounds(app, bodies)}))

asyncio.run(main())
"""


def handler_cpu(target: str, pythonpath: Path, rs: RedisServer, prefix: str, tmp: Path, users: list[str],
                n: int = 2000) -> float:
    """CPU microseconds per warm /recommend, in-process over ASGI (`target`: an artifacts root, or "bare")."""
    env = {**os.environ, "PYTHONPATH": f"{pythonpath}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1",
           "MRDIB_LOG_LEVEL": "WARNING"}
    r = subprocess.run([sys.executable, "-c", _INPROC, target, rs.url, prefix, str(tmp / "wal-inproc.jsonl"), str(n),
                        json.dumps(users)], cwd=pythonpath, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"in-process measurement failed: {r.stderr[-2000:]}")
    return float(json.loads(r.stdout.strip().splitlines()[-1])["cpu_us"])


# --- main ------------------------------------------------------------------------------------------

def build_synthetic(root: Path) -> str:
    sys.path.insert(0, str(REPO))
    from bench.planted_artifact import build_planted_artifact

    return build_planted_artifact(root, n_items=1682, n_users=943, dim=64, n_clusters=19, history_len=20,
                                  max_history=50)


def served_artifact(root: Path) -> LoadedArtifact:
    """The version `current` names under `root` (verified), whose ids the requests use."""
    from mrdib.artifact.store import current_version, load_artifact

    version = current_version(root)
    if version is None:
        raise SystemExit(f"no published artifact under {root}")
    return load_artifact(root / version)


def describe_artifact(art: LoadedArtifact, root: Path) -> str:
    """One line for the report: what was trained on what, and how good it is."""
    m = art.manifest
    data = m.training_config.get("data", "?")
    test = m.metrics.get("test", {}).get("recall@20")
    kinds = ", ".join(f"{k}: {v.factory}" for k, v in m.indexes.items())
    return (f"`{m.model_version}` under `{root.name}/`: {m.backbone}{' +MRdIB' if m.mrdib else ''} trained on "
            f"`{data}` ({m.n_users:,} users, {m.n_items:,} items, d={m.embedding_dim}; test Recall@20 "
            f"{'?' if test is None else f'{test:.4f}'}; indexes {kinds})")


def git_service_copy(ref: str, dest: Path) -> Path:
    """The `service` package as committed at `ref`, extracted with git archive (no change to the checkout)."""
    dest.mkdir(parents=True, exist_ok=True)
    arch = subprocess.run(["git", "-C", str(REPO), "archive", ref, "service"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch.stdout, check=True)
    return dest


def fmt(cells: list[Cell]) -> list[list[str]]:
    return [[c.scenario, str(c.conns), f"{c.rps:,.0f}", f"{c.p50_ms:.2f}", f"{c.p95_ms:.2f}", f"{c.p99_ms:.2f}",
             f"{c.max_ms:.1f}", str(c.requests), str(c.non2xx), str(c.socket_errors), c.note] for c in cells]


HEADERS = ["scenario", "conns", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "requests", "non-2xx",
           "socket err", "note"]


def plot(cells: list[Cell], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in dict.fromkeys(c.scenario for c in cells):
        cs = [c for c in cells if c.scenario == name]
        a1.plot([c.conns for c in cs], [c.rps for c in cs], "o-", ms=3, label=name)
        a2.plot([c.conns for c in cs], [c.p99_ms for c in cs], "o-", ms=3, label=name)
    for ax, yl in ((a1, "requests/s"), (a2, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel(yl)
    a2.set_yscale("log")
    a1.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


SCENARIOS = ("warm", "cold", "anon", "similar", "events")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2, help="uvicorn workers (service and baseline alike)")
    p.add_argument("--compare-workers", default="1", help="also measure bare+warm at 32 conns with these")
    p.add_argument("--duration", type=int, default=3, help="seconds per cell (wrk takes whole seconds)")
    p.add_argument("--conns", default="1,8,32,128")
    p.add_argument("--artifacts", type=Path, default=None, help="published artifacts root (default: synthetic)")
    p.add_argument("--compare-ref", default=None, help="git ref whose service/ is measured too (warm scenario)")
    p.add_argument("--compare-metrics", action="store_true",
                   help="warm /recommend at 32 conns with per-worker vs multiprocess Prometheus metrics, alternated")
    p.add_argument("--profile", action="store_true", help="py-spy the warm path (1 worker)")
    p.add_argument("--pairs", type=int, default=3,
                   help="bare/warm pairs at 32 connections, alternated, for the throughput ratio (0: none)")
    p.add_argument("--cpu-rounds", type=int, default=3, help="turns of the in-process handler CPU measurement")
    p.add_argument("--only", default=",".join(SCENARIOS),
                   help=f"comma list of service scenarios to run (of {','.join(SCENARIOS)}; the bare baseline "
                        "always runs); a partial run is printed, not written")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    if only - set(SCENARIOS):
        raise SystemExit(f"--only: unknown scenarios {sorted(only - set(SCENARIOS))}; known: {SCENARIOS}")
    if only != set(SCENARIOS):
        a.no_write = True
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    conns = [int(c) for c in a.conns.split(",")]
    started, t0, mach = now(), time.monotonic(), machine()
    tmp = Path(tempfile.mkdtemp(prefix="mrdib-bench-serve-"))
    rs = RedisServer("everysec")
    notes: list[str] = []
    cells: list[Cell] = []
    extra: dict[str, list[Cell]] = {}
    prof: list[tuple[str, float, float]] = []
    cpu: dict[str, float] = {}
    cpu_turns: dict[str, list[int]] = {}
    try:
        if a.artifacts:
            root = a.artifacts.resolve()
            art = served_artifact(root)
            source = describe_artifact(art, root)
        else:
            root = tmp / "artifacts"
            build_synthetic(root)
            art = served_artifact(root)
            source = ("planted artifact of ml-100k's shape (`bench.planted_artifact`: 1,682 items, "
                      "943 users, d=64, 19 planted clusters, mean-pooling ONNX user tower, Flat indexes) -- the "
                      "train+export pipeline was not used")
        prefix = f"bench{os.getpid()}:"
        w = Workload.of(art, tmp, f"r{int(time.time())}")
        n_users = len(w.user_ids)
        scripts = make_scripts(w, warm_users=100)
        env = service_env(root, rs, tmp, prefix)
        print(f"machine: {mach}\nartifact: {source}", flush=True)

        with serving("bench.bare_app:create_app", a.workers, {}) as srv:
            cells += sweep("bare baseline", srv.url, scripts["bare"], conns, a.duration)
        with serving("service.api:create_app", a.workers, env) as srv:
            ready = httpx.get(srv.url + "/readyz").json()
            if ready.get("redis") != "ok":
                raise SystemExit(f"service not ready with Redis: {ready}")
            prewarm(srv.url, warm_users_of(scripts["warm"]))
            hits = hit_ratio_hook(rs.client)
            if "warm" in only:
                cells += sweep("warm /recommend", srv.url, scripts["warm"], conns, a.duration, hits)
            if "cold" in only:
                with Flusher(rs.client, prefix, f"{prefix}uinval"):
                    cells += sweep("cold /recommend", srv.url, scripts["cold"], conns, a.duration, hits)
            if "anon" in only:
                cells += sweep("anon 20-item history", srv.url, scripts["anon"], conns, a.duration)
            if "similar" in only:
                cells += sweep("similar items", srv.url, scripts["similar"], conns, a.duration)
            if "events" in only:
                ev = events_hook(rs.client, f"{prefix}events", tmp / "wal.jsonl")
                cells += sweep("events (fsync everysec)", srv.url, scripts["events"], conns, a.duration, ev)
                rs.client.config_set("appendfsync", "always")
                cells += sweep("events (fsync always)", srv.url, scripts["events"], conns, a.duration, ev)
                rs.client.config_set("appendfsync", "everysec")
                backlog = httpx.get(srv.url + "/readyz").json()["event_backlog"]
                notes.append(f"WAL backlog after the event scenarios: {backlog} (0 = every event went to Redis)")

        for nw in [int(x) for x in a.compare_workers.split(",") if x.strip()]:
            if nw == a.workers:
                continue
            with serving("bench.bare_app:create_app", nw, {}) as srv:
                wrk(srv.url, scripts["bare"], 8, 1.0)
                c = measure(f"bare baseline, {nw} worker(s)", srv.url, scripts["bare"], 32, a.duration)
            with serving("service.api:create_app", nw, env) as srv:
                prewarm(srv.url, warm_users_of(scripts["warm"]))
                wrk(srv.url, scripts["warm"], 8, 1.0)
                d = measure(f"warm /recommend, {nw} worker(s)", srv.url, scripts["warm"], 32, a.duration)
            extra.setdefault("workers", []).extend([c, d])

        if a.compare_metrics and a.workers > 1:
            # What `mrdib serve --workers N` adds for one /metrics over all workers (every metric update goes to a
            # memory-mapped file): alternated twice, so that drifting machine load shows up as spread.
            extra["metrics"] = []
            for _ in range(2):
                for mp in (False, True):
                    with serving("service.api:create_app", a.workers, env, multiproc_metrics=mp) as srv:
                        prewarm(srv.url, warm_users_of(scripts["warm"]))
                        wrk(srv.url, scripts["warm"], 8, 1.0)
                        label = "multiprocess metrics" if mp else "per-worker metrics"
                        extra["metrics"].append(measure(f"warm /recommend, {label}", srv.url, scripts["warm"], 32,
                                                        a.duration))

        if a.compare_ref:
            # The ref and the working tree alternate twice (ref, tree, ref, tree), so that a drift of the
            # machine's load during the comparison shows up as a spread instead of as a difference.
            old = git_service_copy(a.compare_ref, tmp / "ref")
            extra["ref"] = []
            ev = events_hook(rs.client, f"{prefix}events", tmp / "wal.jsonl")
            for _ in range(2):
                for label, path in ((a.compare_ref, old), ("working tree", REPO)):
                    with serving("service.api:create_app", a.workers, env, pythonpath=path) as srv:
                        if "warm" in only:
                            prewarm(srv.url, warm_users_of(scripts["warm"]))
                            extra["ref"] += sweep(f"warm /recommend @ {label}", srv.url, scripts["warm"], conns,
                                                  a.duration)
                        if "events" in only:
                            extra["ref"] += sweep(f"events (fsync everysec) @ {label}", srv.url, scripts["events"],
                                                  conns, a.duration, ev)

        if a.pairs > 0 and "warm" in only:
            with serving("bench.bare_app:create_app", a.workers, {}) as b_srv, \
                    serving("service.api:create_app", a.workers, env) as s_srv:
                prewarm(s_srv.url, warm_users_of(scripts["warm"]))
                wrk(b_srv.url, scripts["bare"], 8, 1.0)
                wrk(s_srv.url, scripts["warm"], 8, 1.0)
                extra["pairs"] = []
                for _ in range(a.pairs):
                    for label, srv, sc in (("bare baseline (alternated)", b_srv, "bare"),
                                           ("warm /recommend (alternated)", s_srv, "warm")):
                        c0 = server_cpu_s(srv.proc.pid)
                        cell = measure(label, srv.url, scripts[sc], 32, a.duration)
                        used = server_cpu_s(srv.proc.pid) - c0
                        cell.note = f"server CPU {used / max(cell.requests, 1) * 1e6:.0f} us/request"
                        extra["pairs"].append(cell)

        users = warm_users_of(scripts["warm"])
        targets = {"bare app": ("bare", REPO), "service (working tree)": (str(root), REPO)}
        if a.compare_ref:
            targets[f"service @ {a.compare_ref}"] = (str(root), tmp / "ref")
        turns: dict[str, list[float]] = {k: [] for k in targets}
        for _ in range(max(1, a.cpu_rounds)):
            for k, (target, path) in targets.items():
                turns[k].append(handler_cpu(target, path, rs, prefix, tmp, users))
        cpu = {k: statistics.median(v) for k, v in turns.items()}
        cpu_turns = {k: [round(x) for x in v] for k, v in turns.items()}
        print("handler CPU per warm request (us, median of turns): " + ", ".join(
            f"{k} {v:.0f} {cpu_turns[k]}" for k, v in cpu.items()), flush=True)

        if a.profile:
            with serving("service.api:create_app", 1, env) as srv:
                prewarm(srv.url, warm_users_of(scripts["warm"]))
                prof = profile(srv.url, srv.proc.pid, scripts["warm"], 8.0, tmp / "profile")
    finally:
        rs.close()

    def get(s: str, c: int) -> Cell | None:
        return next((x for x in cells if x.scenario == s and x.conns == c), None)

    verdict = []
    bare, warm = get("bare baseline", 32), get("warm /recommend", 32)
    if bare and warm:
        ratio, tail = warm.rps / bare.rps, warm.p99_ms / warm.p50_ms
        verdict.append(f"- warm /recommend at 32 connections: {warm.rps:,.0f} req/s = **{ratio:.0%}** of the bare "
                       f"route ({bare.rps:,.0f} req/s; target >= {TARGET_RATIO:.0%}: "
                       f"{'met' if ratio >= TARGET_RATIO else 'MISSED'}); p99/p50 = {tail:.1f} (target < "
                       f"{TARGET_TAIL:.0f}: {'met' if tail < TARGET_TAIL else 'MISSED'})")
    pairs = extra.get("pairs", [])
    if pairs:
        ratios = [w.rps / b.rps for b, w in zip(pairs[::2], pairs[1::2], strict=True)]
        med = statistics.median(ratios)
        verdict.append(f"- warm /recommend vs bare at 32 connections, {len(ratios)} alternated pairs: "
                       f"{', '.join(f'{r:.0%}' for r in ratios)}; median **{med:.0%}** (target >= {TARGET_RATIO:.0%}: "
                       f"{'met' if med >= TARGET_RATIO else 'MISSED'})")
        costs = [(cpu_per_request(b), cpu_per_request(w)) for b, w in zip(pairs[::2], pairs[1::2], strict=True)]
        if all(b and w for b, w in costs):
            cr = [b / w for b, w in costs]
            verdict.append(f"- the same pairs by server CPU per request (uvicorn processes, /proc; what the throughput "
                           f"ratio is when the server is CPU-bound, far less sensitive to other load): bare/warm "
                           f"{', '.join(f'{r:.0%}' for r in cr)}; median **{statistics.median(cr):.0%}**")
    if cpu.get("bare app"):
        x = cpu["service (working tree)"] / cpu["bare app"]
        verdict.append(f"- handler CPU per warm /recommend: {cpu['service (working tree)']:.0f} us = **{x:.2f}x** the "
                       f"bare app's {cpu['bare app']:.0f} us (target <= {TARGET_CPU:.0f}x: "
                       f"{'met' if x <= TARGET_CPU else 'MISSED'})")
    for name in ("events (fsync everysec)", "events (fsync always)"):
        ev = [c for c in cells if c.scenario == name]
        if ev:
            best = max(ev, key=lambda c: c.rps)
            verdict.append(f"- {name}: best {best.rps:,.0f} durable events/s at {best.conns} connections "
                           f"(target >= {TARGET_EVENTS:,.0f}: {'met' if best.rps >= TARGET_EVENTS else 'MISSED'}); "
                           f"{best.note}")
    five = sum(c.non2xx for c in cells)
    verdict.append(f"- non-2xx answers over all cells: {five}; socket errors: {sum(c.socket_errors for c in cells)}")
    all_cells = cells + [c for v in extra.values() for c in v]
    print(text_table(HEADERS, fmt(all_cells)))
    print("\n".join(verdict + notes))
    if prof:
        print(text_table(["function (file)", "inclusive %", "self %"],
                         [(f, f"{i:.1f}", f"{s:.1f}") for f, i, s in prof[:25]]))
    if a.no_write:
        return 0
    png = plot(cells, PLOTS / "serve.png")
    body = [
        "## Serving: the real service under wrk vs a bare FastAPI route",
        "",
        f"- command: `{command()}` ({time.monotonic() - t0:.0f} s)",
        f"- date: {started}; machine: {mach}",
        f"- server: `uvicorn --factory service.api:create_app --workers {a.workers}` (uvloop + httptools"
        f"{'; Prometheus multiprocess mode, as `mrdib serve` sets it up' if a.workers > 1 else ''}), "
        f"subprocess; load: wrk (separate process, up to 2 threads, on the same 2 cores as the server); "
        f"{a.duration:g} s per cell after a 1 s warm-up per scenario",
        f"- artifact: {source}",
        "- Redis: private redis-server, `appendonly yes`, `appendfsync everysec` (the 'fsync always' rows set "
        f"`appendfsync always` at runtime); the cold scenario cycles all {n_users:,} users while the cached vectors "
        "are deleted (and invalidated in the near caches) every 100 ms ('Redis hits' = keyspace hits per request)",
        "- baseline: `bench/bare_app.py`, same request and response models (`service.schemas`), constant 20 items",
        "",
        "### Verdict",
        "",
        *verdict,
        *[f"- {n}" for n in notes],
        "",
        md_table(HEADERS, fmt(cells)),
        "",
        f"![throughput and p99](bench/{png.name})" if png else "",
    ]
    if cpu:
        base = cpu.get("bare app")
        body += ["", "### Handler CPU per warm request (in-process over ASGI, no sockets; median of 5 x 2,000 per "
                 f"turn, {a.cpu_rounds} turns alternated, median of turns)", "",
                 md_table(["app", "CPU us / request", "x bare", "turns (us)"],
                          [(k, f"{v:.0f}", f"{v / base:.2f}" if base else "", ", ".join(map(str, cpu_turns[k])))
                           for k, v in cpu.items()])]
    if "pairs" in extra:
        body += ["", "### Bare route and warm /recommend alternated (32 connections, both servers up)", "",
                 md_table(HEADERS, fmt(extra["pairs"]))]
    if "workers" in extra:
        body += ["", "### Worker count (32 connections)", "", md_table(HEADERS, fmt(extra["workers"]))]
    if "metrics" in extra:
        body += ["", "### Prometheus multiprocess mode vs per-worker registries (32 connections, alternated)", "",
                 md_table(HEADERS, fmt(extra["metrics"]))]
    if "ref" in extra:
        body += ["", f"### Before/after: service at `{a.compare_ref}` vs the working tree (same run)", "",
                 md_table(HEADERS, fmt(extra["ref"]))]
    if prof:
        body += ["", "### Profile of the warm path (py-spy, 1 worker, 32 connections)", "",
                 md_table(["function (file)", "inclusive %", "self %"],
                          [(f"`{f}`", f"{i:.1f}", f"{s:.1f}") for f, i, s in prof[:25]])]
    body += ["", "<details><summary>raw cells (JSON)</summary>\n", "```json",
             json.dumps([asdict(c) for c in all_cells]), "```", "</details>"]
    write_section("serve", "\n".join(body))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
