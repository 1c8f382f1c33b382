"""`mrdib serve --workers 2`, for real: the installed command line as a subprocess on a free loopback port,
over an artifact trained and exported by the real export (tests/_export_helpers.py), then /readyz and
/recommend through both worker processes, /metrics that counts both workers' requests whichever worker
answers the scrape, then a clean shutdown on SIGTERM.

How the test knows that both workers answered, without any worker id in the responses: with no REDIS_URL
each worker keeps user vectors in its own in-process cache. Asking for the same user over and over (a new
connection each time, so the kernel hands each request to whichever worker accepts it) gives exactly one
`cached: false` answer per worker that served it: two misses = two workers, never three.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")

from tests._export_helpers import write_tiny_checkpoint, write_tiny_mmrec  # noqa: E402
from tests._service_helpers import free_port, metric_sum  # noqa: E402

READY_BUDGET_S = 60.0
MAX_REQUESTS = 60  # until both workers have answered; P(all on one worker) is negligible long before


def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (from /proc: no psutil needed)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (d / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
    return out


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    from training.export import export_checkpoint

    tmp = tmp_path_factory.mktemp("serve-workers")
    data = write_tiny_mmrec(tmp / "data")
    ckpt = write_tiny_checkpoint(tmp / "ckpt", data, epochs=10)
    root = tmp / "artifacts"
    export_checkpoint(ckpt, root, tower_epochs=3)
    return root


def test_serve_with_two_workers(tmp_path: Path, artifacts: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRDIB_") and k != "REDIS_URL"}
    env.update(MRDIB_WAL_PATH=str(tmp_path / "events.wal.jsonl"), MRDIB_CPU_THREADS="1")
    cmd = [sys.executable, "-c", "import sys; from mrdib.cli import app; sys.argv[0] = 'mrdib'; app()", "serve",
           "--artifacts", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]  # fmt: skip
    log = tmp_path / "serve.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        version = (artifacts / "current").read_text().strip()
        while True:  # ready: both workers import the app, load and verify the artifact
            assert proc.poll() is None, f"mrdib serve exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() - t0 < READY_BUDGET_S, f"not ready:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(httpx.TransportError):
                r = httpx.get(f"{base}/readyz", timeout=5)
                if r.status_code == 200:
                    break
            time.sleep(0.3)
        ready_s = time.monotonic() - t0
        workers = [p for p in _children(proc.pid) if "resource_tracker" not in _cmdline(p)]
        assert len(workers) == 2, [(p, _cmdline(p)) for p in _children(proc.pid)]

        # Fresh connections ("Connection: close"): each request is accepted by either worker.
        ready = [httpx.get(f"{base}/readyz", headers={"Connection": "close"}, timeout=5) for _ in range(6)]
        assert all(r.status_code == 200 and r.json()["model_version"] == version for r in ready)
        misses = requests = 0
        while misses < 2 and requests < MAX_REQUESTS:
            r = httpx.post(f"{base}/recommend", json={"user_id": "0", "k": 5}, headers={"Connection": "close"},
                           timeout=10)  # fmt: skip
            requests += 1
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model_version"] == version and body["source"] == "user" and len(body["items"]) == 5
            misses += not body["cached"]
        assert misses == 2, f"{requests} requests, {misses} cache miss(es): only one worker answered"
        for _ in range(10):  # both caches now hold the user: no third miss, whichever worker answers
            r = httpx.post(f"{base}/recommend", json={"user_id": "0", "k": 5}, headers={"Connection": "close"},
                           timeout=10)  # fmt: skip
            assert r.status_code == 200 and r.json()["cached"] is True
        requests += 10

        # One /metrics for both workers: whichever worker a scrape reaches, it counts every request.
        for _ in range(4):
            text = httpx.get(f"{base}/metrics", headers={"Connection": "close"}, timeout=5).text
            assert metric_sum(text, "mrdib_request_seconds_count", 'route="/recommend"') == requests
            assert metric_sum(text, "mrdib_user_cache_total", 'result="miss"') == 2
            assert metric_sum(text, "mrdib_user_cache_total", 'result="hit"') == requests - 2
            assert text.count('mrdib_model_info{pid="') == 2 and f'version="{version}"' in text

        # Clean shutdown: SIGTERM to the supervisor stops both workers, and it exits 0.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
        assert not any(Path(f"/proc/{p}").exists() and "zombie" not in _status(p) for p in workers)
        print(f"2 workers ready in {ready_s:.1f}s; both answered within {requests} /recommend requests")
    finally:
        _stop(proc)


def _status(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (Path("/proc") / str(pid) / "status").read_text().lower()
    return ""
