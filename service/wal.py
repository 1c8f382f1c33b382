"""Append-only JSON-lines write-ahead files: fsync'ed appends, shared safely by worker processes.

Two users: accepted events while Redis is down (events.py) and admin item changes while Redis is down
(items.py). Both need the same three things, so they live here once:

* an append is on disk (file data, and the directory entry of a new file) before the caller answers;
* ``flock`` serialises appends and replays across the worker processes of one host that share the path;
* a replay holds the lock while it reads the lines, sends them to Redis and truncates the file, so no
  line appended meanwhile is truncated unsent. Lines appended under that same lock (`LockedWal.append`)
  come after the lines read, which keeps the order of changes.

Blocking file I/O: callers on the event loop run these methods in a thread.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from mrdib.artifact.store import fsync_dir


class LockedWal:
    """A WAL opened and exclusively locked (flock) until `close()`; see the module docstring for why."""

    def __init__(self, f: IO[str], path: Path):
        self._f = f
        self.path = path

    def lines(self) -> list[str]:
        """Every non-empty line, in file order."""
        self._f.seek(0)
        return [ln for ln in self._f.read().splitlines() if ln.strip()]

    def append(self, line: str) -> None:
        """Append one line and fsync before returning (the lock is already held)."""
        self._f.seek(0, os.SEEK_END)
        self._f.write(line + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def clear(self) -> None:
        """Truncate to empty, durably: call only once every line read is safe elsewhere."""
        self._f.seek(0)
        self._f.truncate()
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        try:
            fcntl.flock(self._f, fcntl.LOCK_UN)
        finally:
            self._f.close()

    def __enter__(self) -> LockedWal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WalFile:
    """Append-only JSON-lines file with fsync; flock makes it safe across processes."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def locked(self) -> LockedWal:
        """Open (creating it if needed) and take the exclusive lock; blocks while another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (closed by LockedWal.close)
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
            if created:
                fsync_dir(self.path.parent)
        except BaseException:
            f.close()
            raise
        return LockedWal(f, self.path)

    def append(self, line: str) -> None:
        """Append one line durably (fsync'ed, directory too for a new file) before returning."""
        with self.locked() as wal:
            wal.append(line)

    def looks_empty(self) -> bool:
        """One stat, no open or lock: cheap enough for the event loop of a loop that polls every tick. A line
        appended right after is seen at the next poll; a file truncated by a replay was sent to Redis first."""
        try:
            return self.path.stat().st_size == 0
        except FileNotFoundError:
            return True

    def read_lines(self) -> list[str]:
        """Every non-empty line, under a shared lock (never a half-written one); [] when there is no file."""
        try:
            f = open(self.path, encoding="utf-8")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            return []
        try:
            fcntl.flock(f, fcntl.LOCK_SH)
            return [ln for ln in f.read().splitlines() if ln.strip()]
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()

    def count(self) -> int:
        try:
            with open(self.path, "rb") as f:
                return sum(1 for line in f if line.strip())
        except FileNotFoundError:
            return 0
