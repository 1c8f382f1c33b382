"""The service on a real Redis Cluster (3 masters, no replicas) under faults.

1. One node SIGKILLed under a steady load of /recommend + /events, then restarted (same port, same AOF and
   nodes.conf), without restarting the service: zero 5xx and transport errors, /readyz degraded then ok, and
   every one of 10,000 acknowledged events in ITS shard's stream (the one its user hashes to) exactly once,
   whether it went to Redis directly or through the WAL replay.
2. A cluster served by a service configured for a single Redis: Redis answers errors (MOVED), which /readyz,
   a metric and the log show while the events are kept in the WAL; restarted in cluster mode on the same WAL,
   the service replays them into their shards, once each.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter

import httpx
import pytest

from mrdib.artifact.store import load_artifact
from service.api import create_app
from service.settings import Settings
from tests._fault_helpers import Load, record, wait_for
from tests._service_helpers import PrivateCluster, ServerThread, metric_sum

pytestmark = [pytest.mark.redis, pytest.mark.timeout(300),
              pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                                 reason="redis-server / redis-cli not installed")]

N_EVENTS = 10_000
EVENT_THREADS = 6


def _events_by_id(client, layout) -> dict[str, list[str]]:
    """event id -> the streams holding it (every shard stream of the layout)."""
    where: dict[str, list[str]] = {}
    for key in layout.streams():
        for _, f in client.xrange(key):
            where.setdefault(f[b"event_id"].decode(), []).append(key)
    return where


def test_cluster_node_killed_under_load_events_exactly_once_in_their_shard(tmp_path, build_artifact):
    root = tmp_path / "artifacts"
    art = load_artifact(root / build_artifact(root))
    users, items = art.user_ids[:40], art.item_ids
    cluster = PrivateCluster()
    cluster.start()
    settings = Settings(artifacts=root, redis_url=cluster.url, redis_mode="cluster", redis_key_prefix="fc:",
                        stream="fc:events", wal_path=tmp_path / "wal.jsonl", poll_interval_s=0,
                        redis_check_interval_s=0.1, redis_socket_timeout_s=0.2, redis_connect_timeout_s=0.2,
                        cpu_threads=2)
    layout = settings.layout
    accepted: dict[str, str] = {}  # event id -> user
    sinks: Counter[str] = Counter()
    bad: list[str] = []
    try:
        with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:

            def post_event(c: httpx.Client, tid: int, i: int) -> httpx.Response:
                eid, user = f"t{tid}-{i}", users[(i * 3 + tid) % 40]
                r = c.post("/events", json={"user_id": user, "item_id": items[(i * 7 + tid) % len(items)],
                                            "type": "click", "event_id": eid})
                if r.status_code == 202:
                    accepted[r.json()["event_id"]] = user
                    sinks[r.json()["durable_in"]] += 1
                else:
                    bad.append(f"/events {r.status_code}: {r.text[:200]}")
                return r

            def recommend(c: httpx.Client, tid: int, i: int) -> httpx.Response:
                r = c.post("/recommend", json={"user_id": users[i % 40], "k": 10})
                if r.status_code != 200:
                    bad.append(f"/recommend {r.status_code}: {r.text[:200]}")
                return r

            assert http.get("/readyz").json()["redis"] == "ok"
            victim = cluster.ports[1]
            t0 = time.monotonic()
            with Load(srv.url, recommend, threads=2) as recs, \
                    Load(srv.url, post_event, threads=EVENT_THREADS, limit=N_EVENTS) as events:
                wait_for(lambda: events.count >= 3 * N_EVENTS // 10, timeout=90, what="30% of the events")
                cluster.kill(victim)
                killed_at = events.count
                wait_for(lambda: http.get("/readyz").json()["redis"] == "degraded", what="degraded", timeout=30)
                wait_for(lambda: http.get("/readyz").json()["event_backlog"], what="WAL backlog", timeout=30)
                wait_for(lambda: events.count >= N_EVENTS // 2, timeout=90, what="half of the events")
                cluster.start(victim)  # same port, same AOF and nodes.conf: the same node, its slots, its data
                restarted_at = events.count
                wait_for(lambda: http.get("/readyz").json()["redis"] == "ok", what="redis ok again", timeout=60)
                events.join(timeout=150)
                recs.stop.set()
            duration = time.monotonic() - t0
            wait_for(lambda: http.get("/readyz").json()["event_backlog"] == 0, timeout=60, what="WAL replayed")
            after = http.post("/events", json={"user_id": users[1], "item_id": items[2], "type": "view",
                                               "event_id": "after"}).json()
            assert after["durable_in"] == "redis"
            accepted["after"] = users[1]

            assert not bad, bad[:5]
            assert recs.server_errors() == 0 and events.server_errors() == 0
            assert not recs.errors and not events.errors, (recs.errors + events.errors)[:5]
            assert events.statuses == Counter({202: N_EVENTS})
            assert sinks["redis"] > 0 and sinks["wal"] > 0, sinks  # both paths really exercised

            where = _events_by_id(cluster.client(), layout)
            dupes = {e: ks for e, ks in where.items() if len(ks) > 1}
            assert not dupes, f"{len(dupes)} events duplicated, e.g. {list(dupes.items())[:3]}"
            missing = set(accepted) - set(where)
            assert not missing, f"{len(missing)} accepted events missing, e.g. {sorted(missing)[:3]}"
            misplaced = {e: ks[0] for e, ks in where.items() if ks[0] != layout.user_stream(accepted[e])}
            assert not misplaced, f"events outside their user's shard: {list(misplaced.items())[:3]}"
            assert len(where) == len(accepted) == N_EVENTS + 1
            record("redis_cluster_node_killed_under_load",
                   load=f"{EVENT_THREADS} threads posting {N_EVENTS:,} events + 2 threads of /recommend, "
                        f"{duration:.1f} s, 3-master cluster, {layout.shards} event shards",
                   faults=f"one master SIGKILLed after {killed_at:,} events, restarted after {restarted_at:,}",
                   requests=recs.count + events.count, events_accepted=len(accepted) - 1,
                   events_via_redis=sinks["redis"], events_via_wal=sinks["wal"],
                   shards_used=len({ks[0] for ks in where.values()}), duplicates=0, lost=0, failures=0)
    finally:
        cluster.close()


def test_single_mode_on_a_cluster_shows_the_errors_and_loses_nothing(tmp_path, build_artifact, redis_cluster,
                                                                     capsys):
    root = tmp_path / "artifacts"
    art = load_artifact(root / build_artifact(root))
    common = dict(artifacts=root, redis_url=redis_cluster.url, redis_key_prefix="mis:", stream="mis:events",
                  wal_path=tmp_path / "wal.jsonl", poll_interval_s=0, redis_check_interval_s=0.1, cpu_threads=2)
    wrong = Settings(redis_mode="single", **common)
    users = art.user_ids[:30]
    with ServerThread(create_app(wrong)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        sinks = [http.post("/events", json={"user_id": u, "item_id": art.item_ids[0], "type": "click",
                                            "event_id": f"e-{u}"}).json()["durable_in"] for u in users]
        assert "wal" in sinks, sinks  # keys of the slots the URL's node does not own: MOVED, kept in the WAL
        ready = wait_for(lambda: (b := http.get("/readyz").json())["redis"] == "error" and b, what="redis error")
        assert ready["status"] == "ready" and "MOVED" in ready["redis_error"] and ready["event_backlog"] > 0, ready
        metrics = http.get("/metrics").text
        assert metric_sum(metrics, "mrdib_redis_refused_total", 'code="MOVED"') >= 1
        assert http.post("/recommend", json={"user_id": users[0]}).status_code == 200  # still answered, locally
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    refusals = {(x["op"], x["code"]): x for x in logged if x.get("event") == "redis_refused"}
    assert refusals[("record_event", "MOVED")]["level"] == "error", refusals

    # The same WAL under the right mode: every event reaches its shard, exactly once.
    right = Settings(redis_mode="cluster", **common)
    with ServerThread(create_app(right)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        wait_for(lambda: http.get("/readyz").json()["event_backlog"] == 0, timeout=30, what="WAL replayed")
        assert http.get("/readyz").json()["redis"] == "ok"
    where = _events_by_id(redis_cluster.client(), right.layout)
    assert {e: len(ks) for e, ks in where.items()} == {f"e-{u}": 1 for u in users}
    assert all(ks[0] == right.layout.user_stream(e[2:]) for e, ks in where.items())
