"""Redis killed (SIGKILL) under a steady load of /recommend + /events, then restarted, without restarting the service.

One scenario, several promises checked on it:
- zero 5xx and zero transport errors for either route while Redis is gone;
- /readyz reports "degraded" while it is gone and "ok" again after, with no service restart;
- recovery: cached user vectors are served again (`cached: true`) and new events go to Redis directly;
- 10,000 events are posted; every one answered 202 is in the Redis stream exactly once (by event id),
  whether it went to Redis directly or through the WAL replay.

The private redis-server (tests._fault_helpers.FastPrivateRedis) runs with AOF (`appendfsync everysec`: every
reply follows the write(2) to the AOF), so what it acknowledged before the kill is still there after the restart
on the same port and directory.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter

import httpx
import pytest
import redis

from mrdib.artifact.store import load_artifact
from service.api import create_app
from service.settings import Settings
from tests._fault_helpers import FastPrivateRedis, Load, record, wait_for
from tests._service_helpers import ServerThread

pytestmark = [pytest.mark.redis, pytest.mark.timeout(240),
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")]

N_EVENTS = 10_000
EVENT_THREADS = 6


def test_redis_killed_under_load_events_exactly_once(tmp_path, build_artifact):
    root = tmp_path / "artifacts"
    art = load_artifact(root / build_artifact(root))
    users, items = art.user_ids[:40], art.item_ids
    rs = FastPrivateRedis()
    rs.start()
    settings = Settings(artifacts=root, redis_url=rs.url, redis_key_prefix="f:", stream="f:events",
                        wal_path=tmp_path / "wal.jsonl", poll_interval_s=0, redis_check_interval_s=0.1,
                        redis_socket_timeout_s=0.2, redis_connect_timeout_s=0.2, cpu_threads=2,
                        event_rate_per_s=0)  # 250 events per user in seconds: this test is about durability
    accepted: list[str] = []
    sinks: Counter[str] = Counter()
    rec_cached: list[bool] = []
    bad: list[str] = []
    try:
        with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:

            def post_event(c: httpx.Client, tid: int, i: int) -> httpx.Response:
                eid = f"t{tid}-{i}"
                r = c.post("/events", json={"user_id": users[i % 40], "item_id": items[(i * 7 + tid) % len(items)],
                                            "type": "click", "event_id": eid})
                if r.status_code == 202:
                    accepted.append(r.json()["event_id"])
                    sinks[r.json()["durable_in"]] += 1
                else:
                    bad.append(f"/events {r.status_code}: {r.text[:200]}")
                return r

            def recommend(c: httpx.Client, tid: int, i: int) -> httpx.Response:
                r = c.post("/recommend", json={"user_id": users[i % 40], "k": 10})
                if r.status_code == 200:
                    rec_cached.append(r.json()["cached"])
                else:
                    bad.append(f"/recommend {r.status_code}: {r.text[:200]}")
                return r

            assert http.get("/readyz").json()["redis"] == "ok"
            t0 = time.monotonic()
            with Load(srv.url, recommend, threads=2) as recs, \
                    Load(srv.url, post_event, threads=EVENT_THREADS, limit=N_EVENTS) as events:
                wait_for(lambda: events.count >= 3 * N_EVENTS // 10, timeout=60, what="30% of the events")
                rs.kill()
                killed_at = events.count
                wait_for(lambda: http.get("/readyz").json()["redis"] == "degraded", what="degraded")
                degraded_backlog = wait_for(lambda: http.get("/readyz").json()["event_backlog"], what="WAL backlog")
                wait_for(lambda: events.count >= N_EVENTS // 2, timeout=60, what="half of the events")
                rs.start()  # same port, same AOF directory
                restarted_at = events.count
                wait_for(lambda: http.get("/readyz").json()["redis"] == "ok", what="redis ok again")
                events.join(timeout=100)
                recs.stop.set()
            duration = time.monotonic() - t0

            wait_for(lambda: http.get("/readyz").json()["event_backlog"] == 0, timeout=30, what="WAL replayed")
            # Recovery without restart: new events go straight to Redis, cached vectors are served again.
            assert http.post("/events", json={"user_id": users[1], "item_id": items[2], "type": "view",
                                              "event_id": "after"}).json()["durable_in"] == "redis"
            accepted.append("after")
            http.post("/recommend", json={"user_id": users[39]})
            assert http.post("/recommend", json={"user_id": users[39]}).json()["cached"] is True

            assert not bad, bad[:5]
            assert recs.server_errors() == 0 and events.server_errors() == 0
            assert not recs.errors and not events.errors, (recs.errors + events.errors)[:5]
            assert events.statuses == Counter({202: N_EVENTS})
            assert sinks["redis"] > 0 and sinks["wal"] > 0, sinks  # both paths really exercised
            assert degraded_backlog > 0

            r = redis.Redis.from_url(rs.url)
            in_stream = Counter(f[b"event_id"].decode() for key in settings.layout.streams() for _, f in r.xrange(key))
            dupes = {e: n for e, n in in_stream.items() if n > 1}
            assert not dupes, f"{len(dupes)} events duplicated in the stream, e.g. {list(dupes.items())[:3]}"
            missing = set(accepted) - set(in_stream)
            assert not missing, f"{len(missing)} accepted events missing from the stream, e.g. {sorted(missing)[:3]}"
            assert len(in_stream) == len(accepted) == N_EVENTS + 1
            record("redis_killed_under_load",
                   load=f"{EVENT_THREADS} threads posting {N_EVENTS:,} events + 2 threads of /recommend, "
                        f"{duration:.1f} s",
                   faults=f"redis-server SIGKILLed after {killed_at:,} events, restarted after {restarted_at:,}",
                   requests=recs.count + events.count, recommend_requests=recs.count,
                   recommend_cached_share=round(sum(rec_cached) / max(len(rec_cached), 1), 3),
                   events_accepted=len(accepted) - 1, events_via_redis=sinks["redis"], events_via_wal=sinks["wal"],
                   stream_entries=len(in_stream), duplicates=0, lost=0, failures=0)
    finally:
        rs.close()
