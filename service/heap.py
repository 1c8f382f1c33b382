"""Keep the garbage collector's full passes off the request path.

A worker holds ~100k long-lived Python objects (FastAPI, pydantic, onnxruntime and numpy modules, the
loaded model's bookkeeping). CPython's full (generation 2) collection walks all of them: measured 60-70 ms
per pass on the benchmark machine, every few thousand requests -- long enough to stall every request in
flight, which is what the serving benchmark's p99 was made of. After a model is loaded we collect once and
`gc.freeze()` what survives: frozen objects are never traversed again, so a full pass only walks what
requests created since. Reference counting still frees frozen objects that become unreachable (an old
model version after a swap); only reference CYCLES among frozen objects would wait, which is why a swap
unfreezes, collects and freezes again (one pause per reload, not per few thousand requests).
"""

from __future__ import annotations

import gc
import time

import structlog

log = structlog.get_logger("mrdib.service.heap")


def settle() -> float:
    """Collect everything collectable, then freeze the survivors. Returns the milliseconds spent."""
    t0 = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    ms = (time.perf_counter() - t0) * 1e3
    log.info("heap_frozen", frozen_objects=gc.get_freeze_count(), pause_ms=round(ms, 1))
    return ms
