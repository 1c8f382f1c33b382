"""Prometheus metrics of one app instance.

Each app gets its own CollectorRegistry (not the global default) so that several apps can live
in one process (tests) without "duplicated timeseries" errors; `/metrics` exposes that registry.

Several worker processes (`mrdib serve --workers N`): a scrape reaches ONE worker, which alone would
report its own share of the traffic. `mrdib serve` then points PROMETHEUS_MULTIPROC_DIR at a fresh
folder before the workers start (prometheus_client's multiprocess mode: every process writes its values
to memory-mapped files there), and `/metrics` aggregates the files of all workers: counters and
histograms summed, each gauge by its `multiprocess_mode` below (per-worker series where the workers
may legitimately differ, e.g. during a model swap).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> Path | None:
    """The multiprocess folder when this process runs in prometheus_client's multiprocess mode."""
    d = os.environ.get(MULTIPROC_ENV)
    return Path(d) if d else None


def prepare_multiprocess_dir() -> Path:
    """Before the workers start: use $PROMETHEUS_MULTIPROC_DIR or a new temporary folder, and export it to the
    workers. The metric files (*.db) of an earlier run are removed, as prometheus_client asks (they would be added
    to this run's counters); nothing else in a folder we were only pointed at is touched."""
    d = multiprocess_dir()
    if d is None:
        d = Path(tempfile.mkdtemp(prefix="mrdib-metrics-"))
    else:
        d.mkdir(parents=True, exist_ok=True)
        for stale in d.glob("*.db"):
            stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(d)
    return d


def mark_worker_gone() -> None:
    """At a worker's shutdown: drop its live gauges from the aggregate (no-op outside multiprocess mode)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(os.getpid())

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """All metric families, created once per app."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.latency = Histogram(
            "mrdib_request_seconds", "request latency per route", ["route", "method", "status"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.cache = Counter("mrdib_user_cache_total", "user-vector cache lookups", ["result"], registry=r)
        self.fallbacks = Counter(
            "mrdib_fallbacks_total", "requests served by a fallback path", ["kind"], registry=r
        )
        self.model_info = Gauge("mrdib_model_info", "1 for the model version being served", ["version"], registry=r,
                                multiprocess_mode="liveall")  # one series per worker: a swap shows up worker by worker
        self.index_size = Gauge("mrdib_index_size", "vectors per index", ["index"], registry=r,
                                multiprocess_mode="liveall")
        self.event_backlog = Gauge("mrdib_event_backlog", "events in the local WAL not yet in Redis", registry=r,
                                   multiprocess_mode="livemax")  # the workers of a host share the WAL file
        self.events = Counter("mrdib_events_total", "accepted events by where they were made durable",
                              ["sink"], registry=r)
        self.events_refused = Counter("mrdib_events_refused_total", "events refused before recording",
                                      ["reason"], registry=r)
        self.event_duplicates = Counter("mrdib_event_duplicates_total", "events answered as retries of an event "
                                        "the same user sent before (nothing recorded)", registry=r)
        self.replayed = Counter("mrdib_events_replayed_total", "WAL events replayed to Redis", ["result"], registry=r)
        self.redis_up = Gauge("mrdib_redis_up", "1 when Redis answers, 0 when degraded (or not configured)",
                              registry=r, multiprocess_mode="livemin")  # any worker cut off from Redis shows
        self.redis_errors = Counter("mrdib_redis_errors_total", "Redis operations that failed (unreachable or refused)",
                                    ["op"], registry=r)
        self.redis_refused = Counter(
            "mrdib_redis_refused_total", "Redis operations that Redis answered with an error (CROSSSLOT, OOM, "
            "WRONGTYPE, ...): reachable but not doing what the service asks; /readyz says error", ["op", "code"],
            registry=r)
        self.redis_pool_exhausted = Counter(
            "mrdib_redis_pool_exhausted_total", "Redis operations that found no free pooled connection in time "
            "(served locally; Redis is not marked down)", ["op"], registry=r)
        self.item_changes_pending = Gauge(
            "mrdib_item_changes_pending", "admin item changes in the local WAL not yet in Redis", registry=r,
            multiprocess_mode="livemax")
        self.event_batch = Histogram("mrdib_event_batch_size", "events per pipelined Redis round trip (group commit)",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024), registry=r)
        self.unservable = Counter("mrdib_unservable_total", "requests the served model could not answer (a vector "
                                  "or score beyond the servable bound: a faulty model; answered 503)", registry=r)
        self.reloads = Counter("mrdib_model_reloads_total", "model load attempts", ["result"], registry=r)
        # Labelled children of the per-request series, resolved once: `.labels()` costs a lock and a dict lookup
        # on a tuple key per call, a visible share of a warm request.
        self.cache_hit = self.cache.labels(result="hit")
        self.cache_miss = self.cache.labels(result="miss")
        self.fallback_popular = self.fallbacks.labels(kind="popular")
        self.fallback_exact = self.fallbacks.labels(kind="exact_search")
        self._latency_children: dict[tuple[str, str, int], object] = {}
        self._version: str | None = None

    def observe_latency(self, route: str, method: str, status: int, seconds: float) -> None:
        """Latency of one request; the labelled child is cached per (route template, method, status), a set
        bounded by the app's routes (unmatched paths share one "unmatched" route label)."""
        key = (route, method, status)
        child = self._latency_children.get(key)
        if child is None:
            child = self._latency_children[key] = self.latency.labels(route=route, method=method, status=str(status))
        child.observe(seconds)

    def set_model(self, version: str, sizes: dict[str, int]) -> None:
        """Point the info gauge at `version` only (a single series is 1 at any time)."""
        if self._version is not None and self._version != version:
            # clear() forgets the series here but not in a multiprocess file: zero it first
            self.model_info.labels(version=self._version).set(0)
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)
        self._version = version
        for name, n in sizes.items():
            self.index_size.labels(index=name).set(n)

    def render(self) -> bytes:
        """This app's registry; in multiprocess mode the aggregate of every worker's files instead."""
        if multiprocess_dir() is None:
            return generate_latest(self.registry)
        everyone = CollectorRegistry()
        multiprocess.MultiProcessCollector(everyone)
        return generate_latest(everyone)
