"""Service over real HTTP (uvicorn on a loopback port) with the real Redis at REDIS_URL / 127.0.0.1:6379.

Every run uses its own key prefix and stream name, and deletes them afterwards.
"""

from __future__ import annotations

import json
import uuid

import httpx
import numpy as np
import pytest
import redis

from mrdib.artifact.store import load_artifact
from service.api import create_app
from service.settings import Settings
from tests._service_helpers import ServerThread, assert_topk, redis_available, user_tower_vector

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def env(tmp_path_factory, build_artifact):
    import os

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if not redis_available(url):
        pytest.skip(f"no Redis at {url}")
    root = tmp_path_factory.mktemp("artifacts")
    version = build_artifact(root)
    prefix = f"mrdib-test-{uuid.uuid4().hex[:8]}:"
    settings = Settings(artifacts=root, redis_url=url, redis_key_prefix=prefix, stream=prefix + "events",
                        wal_path=root.parent / "wal.jsonl", poll_interval_s=0, redis_check_interval_s=0.2,
                        cpu_threads=2)
    r = redis.Redis.from_url(url)
    with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        yield {"http": http, "redis": r, "prefix": prefix, "version": version, "art": load_artifact(root / version),
               "stream": prefix + "events"}
    keys = list(r.scan_iter(match=prefix + "*"))
    if keys:
        r.delete(*keys)


def test_ready_reports_redis_ok(env):
    body = env["http"].get("/readyz").json()
    assert body["redis"] == "ok" and body["model_version"] == env["version"]


def test_cache_hit_after_miss_in_redis(env):
    http, r, prefix, v = env["http"], env["redis"], env["prefix"], env["version"]
    user = env["art"].user_ids[7]
    first = http.post("/recommend", json={"user_id": user}).json()
    second = http.post("/recommend", json={"user_id": user}).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["items"] == second["items"]
    key = f"{prefix}uvec:{user}"  # one hash per user, one field per model version
    raw = r.hget(key, v)
    dim = env["art"].manifest.embedding_dim
    assert np.allclose(np.frombuffer(raw[: 4 * dim], np.float32), env["art"].user_vectors[7])
    assert json.loads(raw[4 * dim:]) == []  # the recent events it was computed with: none
    assert 0 < r.ttl(key) <= 3600


def test_event_is_streamed_invalidates_cache_and_changes_recommendation(env):
    http, r, prefix, art = env["http"], env["redis"], env["prefix"], env["art"]
    user = art.user_ids[10]
    http.post("/recommend", json={"user_id": user, "k": 5})
    assert http.post("/recommend", json={"user_id": user, "k": 5}).json()["cached"] is True
    before = http.post("/recommend", json={"user_id": user, "k": 5}).json()["items"]
    item = before[0]["item_id"]  # the user buys its top recommendation
    resp = http.post("/events", json={"user_id": user, "item_id": item, "type": "purchase",
                                      "timestamp": "2026-01-02T03:04:05Z"})
    assert resp.status_code == 202 and resp.json()["durable_in"] == "redis"
    eid = resp.json()["event_id"]
    entries = [f for _, f in r.xrange(env["stream"]) if f[b"event_id"] == eid.encode()]
    assert len(entries) == 1 and entries[0][b"item_id"] == item.encode() and entries[0][b"type"] == b"purchase"
    assert entries[0][b"ts"].startswith(b"2026-01-02T03:04:05")
    assert r.lrange(f"{prefix}hist:{user}", 0, -1) == [item.encode()]
    assert r.exists(f"{prefix}uvec:{user}") == 0 and r.get(f"{prefix}uev:{user}") == b"1"
    after = http.post("/recommend", json={"user_id": user, "k": 5}).json()
    assert after["cached"] is False and after["items"] != before
    # The artifact's user tower over the event, then the training history (most recent first).
    hist = [art.item_ids.index(item), *art.seen_items(10).tolist()]
    assert_topk(after["items"], art, user_tower_vector(art, hist), hist, 5)
    assert item not in {i["item_id"] for i in after["items"]}


def test_duplicate_event_id_is_recorded_once(env):
    http, r = env["http"], env["redis"]
    ev = {"user_id": env["art"].user_ids[11], "item_id": env["art"].item_ids[4], "type": "view",
          "event_id": "dup-" + uuid.uuid4().hex}
    assert http.post("/events", json=ev).status_code == 202
    assert http.post("/events", json=ev).status_code == 202
    assert sum(1 for _, f in r.xrange(env["stream"]) if f[b"event_id"] == ev["event_id"].encode()) == 1


def test_new_user_with_events_gets_history_source(env):
    http, art = env["http"], env["art"]
    user = "fresh-" + uuid.uuid4().hex[:6]
    assert http.post("/recommend", json={"user_id": user}).json()["source"] == "popular"
    http.post("/events", json={"user_id": user, "item_id": art.item_ids[2], "type": "click"})
    body = http.post("/recommend", json={"user_id": user, "k": 5}).json()
    assert body["source"] == "history"
    assert_topk(body["items"], art, user_tower_vector(art, [2]), [2], 5)  # the tower over the one click
    assert http.post("/recommend", json={"user_id": user, "k": 5}).json()["cached"] is True


def test_history_cap(env):
    http, r, prefix, art = env["http"], env["redis"], env["prefix"], env["art"]
    user = art.user_ids[12]
    for i in range(55):
        http.post("/events", json={"user_id": user, "item_id": art.item_ids[i], "type": "view"})
    hist = r.lrange(f"{prefix}hist:{user}", 0, -1)
    assert len(hist) == 50 and hist == [i.encode() for i in art.item_ids[54:4:-1]]


def test_concurrent_events_group_commit_each_once_in_order(env):
    """Many events in flight at once share pipelined round trips (group commit): every accepted event is in
    the stream exactly once, a duplicate id inside the same burst included, and each user's events keep the
    order in which they were accepted."""
    import asyncio

    http, r, stream, items = env["http"], env["redis"], env["stream"], env["art"].item_ids
    run = uuid.uuid4().hex[:8]
    events = [{"user_id": f"gc-{run}-{i % 7}", "item_id": items[i % 50], "type": "view", "event_id": f"{run}-{i}"}
              for i in range(300)]
    events += [dict(events[i]) for i in range(0, 300, 15)]  # 20 re-sent ids, in flight with the originals

    async def post_all() -> list[int]:
        sem = asyncio.Semaphore(48)
        async with httpx.AsyncClient(base_url=str(http.base_url), timeout=10) as c:
            async def one(ev):
                async with sem:
                    return (await c.post("/events", json=ev)).status_code
            return await asyncio.gather(*(one(ev) for ev in events))

    before = _batch_metric(http)
    assert set(asyncio.run(post_all())) == {202}
    ids = [f[b"event_id"].decode() for _, f in r.xrange(stream) if f[b"event_id"].decode().startswith(run + "-")]
    assert sorted(ids) == sorted(f"{run}-{i}" for i in range(300))
    after = _batch_metric(http)
    batches, grouped = after[0] - before[0], after[1] - before[1]
    assert grouped == 320 and batches < 320, (batches, grouped)  # some round trips carried several events
    for u in range(7):  # per user: the history list holds the newest first, as the stream order says
        user = f"gc-{run}-{u}"
        in_stream = [f[b"item_id"].decode() for _, f in r.xrange(stream) if f[b"user_id"].decode() == user]
        hist = [x.decode() for x in r.lrange(env["prefix"] + f"hist:{user}", 0, -1)]
        assert hist == in_stream[::-1][: len(hist)]


def _batch_metric(http: httpx.Client) -> tuple[float, float]:
    """(round trips, events) of the group-commit histogram, from /metrics."""
    text = http.get("/metrics").text
    get = lambda name: sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name))  # noqa: E731
    return get("mrdib_event_batch_size_count"), get("mrdib_event_batch_size_sum")
