"""The user-vector cache counters, and a burst of requests larger than the Redis pool (real HTTP, real Redis).

A full pool is not a Redis outage: requests that find no free connection in time are served locally, and the
service must neither answer 5xx nor declare Redis degraded (which would switch every later request to the
local path until the next probe).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
import uuid

import httpx
import pytest
import redis

from mrdib.artifact.store import load_artifact
from mrdib.redis_keys import KeyLayout
from service.api import create_app
from service.settings import Settings
from tests._service_helpers import PrivateRedis, ServerThread, redis_available

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def _metric(text: str, series: str) -> float:
    """Value of one exposition line, e.g. `mrdib_user_cache_total{result="miss"}`; 0 when absent."""
    m = re.search(rf"^{re.escape(series)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize("mode", ["redis", "embedded"])
def test_cache_miss_then_hit_both_counted(tmp_path, build_artifact, mode):
    root = tmp_path / "artifacts"
    user = load_artifact(root / build_artifact(root)).user_ids[0]
    prefix = f"mrdib-test-{uuid.uuid4().hex[:8]}:"
    if mode == "redis" and not redis_available(URL):
        pytest.skip(f"no Redis at {URL}")
    settings = Settings(artifacts=root, redis_url=URL if mode == "redis" else None, redis_key_prefix=prefix,
                        stream=prefix + "events", wal_path=tmp_path / "wal.jsonl", poll_interval_s=0, cpu_threads=2)
    try:
        with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
            if mode == "redis":
                assert http.get("/readyz").json()["redis"] == "ok"
            miss, hit = 'mrdib_user_cache_total{result="miss"}', 'mrdib_user_cache_total{result="hit"}'
            text = http.get("/metrics").text
            assert (_metric(text, miss), _metric(text, hit)) == (0, 0)
            first = http.post("/recommend", json={"user_id": user, "k": 5}).json()
            assert first["cached"] is False
            text = http.get("/metrics").text
            assert (_metric(text, miss), _metric(text, hit)) == (1, 0)
            second = http.post("/recommend", json={"user_id": user, "k": 5}).json()
            assert second["cached"] is True and second["items"] == first["items"]
            text = http.get("/metrics").text
            assert (_metric(text, miss), _metric(text, hit)) == (1, 1)
            # A request by history alone reads no cache: neither counter moves.
            http.post("/recommend", json={"history": [first["items"][0]["item_id"]]})
            text = http.get("/metrics").text
            assert (_metric(text, miss), _metric(text, hit)) == (1, 1)
            if mode == "redis":  # the cached vector really is in Redis, under this model version
                r = redis.Redis.from_url(URL)
                assert r.hexists(KeyLayout(prefix).user_key("uvec", user), first["model_version"])
    finally:
        if mode == "redis" and redis_available(URL):
            r = redis.Redis.from_url(URL)
            keys = list(r.scan_iter(match=prefix + "*"))
            if keys:
                r.delete(*keys)


POOL = 2
BURST = 48
PAUSE_MS = 400


@pytest.mark.redis
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_burst_larger_than_the_pool_is_served_and_not_degraded(tmp_path, build_artifact):
    root = tmp_path / "artifacts"
    users = load_artifact(root / build_artifact(root)).user_ids
    rs = PrivateRedis()  # CLIENT PAUSE stalls the whole server: never on the shared one
    rs.start()
    # Near cache off: every request needs a pooled connection. The probe period is long so that a wrong
    # "degraded" could not be repaired by a probe before the test looks. The socket timeout outlasts the pause:
    # the requests holding the connections wait for Redis and succeed; the others wait for the pool.
    settings = Settings(artifacts=root, redis_url=rs.url, redis_key_prefix="bp:", stream="bp:events",
                        wal_path=tmp_path / "wal.jsonl", poll_interval_s=0, cpu_threads=2, near_cache_ttl_s=0,
                        redis_pool_size=POOL, redis_pool_timeout_s=0.05, redis_socket_timeout_s=2.0,
                        redis_check_interval_s=60)
    try:
        with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
            assert http.get("/readyz").json()["redis"] == "ok"
            admin = redis.Redis.from_url(rs.url)

            async def burst() -> list[httpx.Response]:
                limits = httpx.Limits(max_connections=BURST)
                async with httpx.AsyncClient(base_url=srv.url, timeout=20, limits=limits) as client:
                    return await asyncio.gather(*(
                        client.post("/recommend", json={"user_id": users[i % len(users)], "k": 10})
                        for i in range(BURST)))

            # Redis stalls every client for PAUSE_MS (a slow moment, not an outage) while the burst arrives.
            admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
            t0 = time.monotonic()
            answers = asyncio.run(burst())
            elapsed = time.monotonic() - t0

            assert [r.status_code for r in answers] == [200] * BURST, [r.text for r in answers if r.status_code != 200]
            text = http.get("/metrics").text
            exhausted = sum(float(v) for v in re.findall(r"^mrdib_redis_pool_exhausted_total\{[^}]*\} (\S+)$",
                                                         text, re.M))
            assert exhausted > 0, "the burst never found the pool full: the test did not test anything"
            assert http.get("/readyz").json()["redis"] == "ok"
            assert _metric(text, "mrdib_redis_up") == 1.0
            assert "mrdib_redis_errors_total{" not in text  # no operation counted as a Redis failure
            # Bounded: Redis saw at most POOL connections from the service (plus this test's admin client).
            assert len(admin.client_list()) <= POOL + 1
            assert elapsed < 10
            # Still using Redis afterwards: miss then hit for a fresh user.
            fresh = users[-1]
            admin.delete(KeyLayout("bp:").user_key("uvec", fresh))
            cached = [http.post("/recommend", json={"user_id": fresh}).json()["cached"] for _ in range(2)]
            assert cached == [False, True]
    finally:
        rs.close()
