"""Support for the fault tests: steady background load, and the figures each test records.

Figures: a fault test calls `record(name, **figures)` (load held, faults injected, requests sent,
failures). When MRDIB_FAULT_REPORT_DIR is set (bench/fault_report.py sets it), they are written there as
JSON for docs/BENCHMARKS.md; otherwise recording is a no-op, so the tests run the same in CI.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from tests._service_helpers import PrivateRedis

REPORT_ENV = "MRDIB_FAULT_REPORT_DIR"


def record(name: str, **figures: object) -> None:
    """Write this test's figures (JSON) into $MRDIB_FAULT_REPORT_DIR/<name>.json when that is set. A `covers`
    figure names the issue finding the scenario guards (a column of its own in docs/BENCHMARKS.md)."""
    out = os.environ.get(REPORT_ENV)
    if not out:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"{name}.json").write_text(json.dumps({"test": name, **figures}, default=str, indent=1))


def wait_for(pred: Callable[[], object], timeout: float = 15.0, what: str = "condition", every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Load:
    """`threads` loops, each calling `step(client, i)` until stopped; counts status codes and transport errors.

    `step` returns the httpx.Response (or None to skip counting); everything else it wants to keep, it keeps
    itself (thread-safe containers: list.append is atomic in CPython)."""

    def __init__(self, base_url: str, step: Callable[[httpx.Client, int, int], httpx.Response | None],
                 threads: int = 2, limit: int | None = None):
        self.base_url, self.step, self.limit = base_url, step, limit
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.sent = 0
        self.threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(threads)]

    def _run(self, tid: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as c:
            i = 0
            while not self.stop.is_set():
                with self._lock:
                    if self.limit is not None and self.sent >= self.limit:
                        return
                    self.sent += 1
                try:
                    r = self.step(c, tid, i)
                except httpx.HTTPError as e:  # a transport failure is a failure of the service too
                    self.errors.append(f"{type(e).__name__}: {e}")
                    continue
                finally:
                    i += 1
                if r is not None:
                    with self._lock:
                        self.statuses[r.status_code] += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout: float = 120) -> None:
        for t in self.threads:
            t.join(timeout)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join()

    @property
    def count(self) -> int:
        return sum(self.statuses.values())

    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)


class FastPrivateRedis(PrivateRedis):
    """PrivateRedis with `appendfsync everysec`: each write still reaches the AOF file (write(2)) before Redis
    replies, so a killed *process* loses nothing it acknowledged (only a machine crash could lose up to 1 s);
    it avoids one disk fsync per command, which would make a 10,000-event test take minutes on slow disks."""

    appendfsync = "everysec"

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final AOF rewrite."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None


class ServeProcess:
    """`mrdib serve` for real: the command line in a subprocess (its own process group) on a free loopback port,
    with exactly the environment given (no MRDIB_* or REDIS_URL of the caller's), its log in `log`.
    Entering waits until every worker has started (its `serving` or `no_model` log line) and /readyz answers 200:
    a test that then publishes a version knows that no worker is still loading the first one. Leaving sends
    SIGTERM, then SIGKILL to the group if needed."""

    def __init__(self, workdir: Path, env: dict[str, str], workers: int = 2, ready_s: float = 90.0):
        import sys

        from tests._service_helpers import free_port

        self.port = free_port()
        self.log = Path(workdir) / "serve.log"
        self.workdir = Path(workdir)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MRDIB_") and k != "REDIS_URL"} | env
        self.cmd = [sys.executable, "-c", "import sys; from mrdib.cli import app; sys.argv[0] = 'mrdib'; app()",
                    "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers)]
        self.ready_s = ready_s
        self.workers = workers
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServeProcess:
        import contextlib
        import subprocess

        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=self.workdir, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.ready_s
        while True:
            assert self.proc.poll() is None, f"mrdib serve exited {self.proc.returncode}:\n{self.log_text()[-3000:]}"
            assert time.monotonic() < deadline, f"mrdib serve not ready:\n{self.log_text()[-3000:]}"
            log = self.log_text()
            if log.count('"event": "serving"') + log.count('"event": "no_model"') >= self.workers:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                        return self
            time.sleep(0.3)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int | None:
        import contextlib
        import signal
        import subprocess

        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        return self.proc.returncode

    def __exit__(self, *exc) -> None:
        self.stop()
