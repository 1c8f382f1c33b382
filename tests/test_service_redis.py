"""Service over real HTTP (uvicorn on a loopback port) with a real Redis, in both modes: the Redis at REDIS_URL /
127.0.0.1:6379 (single) and a real 3-master Redis Cluster (the session's `redis_cluster`, started on free ports).

Every run uses its own key prefix and stream name, and deletes them afterwards. Keys are named through the
service's layout (mrdib/redis_keys.py): each user's keys and its shard's stream share one hash tag.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest

from mrdib.artifact.store import load_artifact
from mrdib.redis_keys import sync_client
from service.api import create_app
from service.settings import Settings
from tests._service_helpers import ServerThread, assert_topk, redis_available, user_tower_vector

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module", params=["single", "cluster"])
def env(request, tmp_path_factory, build_artifact):
    import os

    mode = request.param
    if mode == "cluster":
        url = request.getfixturevalue("redis_cluster").url
    else:
        url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        if not redis_available(url):
            pytest.skip(f"no Redis at {url}")
    root = tmp_path_factory.mktemp("artifacts")
    version = build_artifact(root)
    prefix = f"mrdib-test-{uuid.uuid4().hex[:8]}:"
    # generous timeouts: these tests check answers, not outages (two shared cores can stall a reply 0.25 s)
    settings = Settings(artifacts=root, redis_url=url, redis_mode=mode, redis_key_prefix=prefix,
                        stream=prefix + "events", wal_path=root.parent / "wal.jsonl", poll_interval_s=0,
                        redis_check_interval_s=0.2, cpu_threads=2, redis_socket_timeout_s=2.0,
                        redis_connect_timeout_s=2.0)
    r = sync_client(url, mode)
    layout = settings.layout
    with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        yield {"http": http, "redis": r, "prefix": prefix, "version": version, "art": load_artifact(root / version),
               "layout": layout, "mode": mode, "url": url}
    keys = [k for pattern in (prefix + "*", layout.stream + "*")
            for k in r.scan_iter(match=pattern, **({"target_nodes": r.ALL_NODES} if mode == "cluster" else {}))]
    for k in keys:  # one by one: in a cluster they live in different slots
        r.delete(k)


def stream_of(env, user: str) -> list[tuple[bytes, dict]]:
    """The entries of `user`'s shard stream."""
    return env["redis"].xrange(env["layout"].user_stream(user))


def all_streams(env) -> list[tuple[bytes, dict]]:
    return [e for key in env["layout"].streams() for e in env["redis"].xrange(key)]


def test_ready_reports_redis_ok(env):
    body = env["http"].get("/readyz").json()
    assert body["redis"] == "ok" and body["model_version"] == env["version"] and "redis_error" not in body


def test_cache_hit_after_miss_in_redis(env):
    http, r, v = env["http"], env["redis"], env["version"]
    user = env["art"].user_ids[7]
    first = http.post("/recommend", json={"user_id": user}).json()
    second = http.post("/recommend", json={"user_id": user}).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["items"] == second["items"]
    key = env["layout"].user_key("uvec", user)  # one hash per user, one field per model version
    raw = r.hget(key, v)
    dim = env["art"].manifest.embedding_dim
    assert np.allclose(np.frombuffer(raw[: 4 * dim], np.float32), env["art"].user_vectors[7])
    assert json.loads(raw[4 * dim:]) == []  # the recent events it was computed with: none
    assert 0 < r.ttl(key) <= 3600


def test_event_is_streamed_invalidates_cache_and_changes_recommendation(env):
    http, r, layout, art = env["http"], env["redis"], env["layout"], env["art"]
    user = art.user_ids[10]
    http.post("/recommend", json={"user_id": user, "k": 5})
    assert http.post("/recommend", json={"user_id": user, "k": 5}).json()["cached"] is True
    before = http.post("/recommend", json={"user_id": user, "k": 5}).json()["items"]
    item = before[0]["item_id"]  # the user buys its top recommendation
    resp = http.post("/events", json={"user_id": user, "item_id": item, "type": "purchase",
                                      "timestamp": "2026-01-02T03:04:05Z"})
    assert resp.status_code == 202 and resp.json()["durable_in"] == "redis"
    eid = resp.json()["event_id"]
    entries = [f for _, f in stream_of(env, user) if f[b"event_id"] == eid.encode()]
    assert len(entries) == 1 and entries[0][b"item_id"] == item.encode() and entries[0][b"type"] == b"purchase"
    assert entries[0][b"ts"].startswith(b"2026-01-02T03:04:05")
    assert r.lrange(layout.user_key("hist", user), 0, -1) == [item.encode()]
    assert r.exists(layout.user_key("uvec", user)) == 0 and r.get(layout.user_key("uev", user)) == b"1"
    after = http.post("/recommend", json={"user_id": user, "k": 5}).json()
    assert after["cached"] is False and after["items"] != before
    # The artifact's user tower over the event, then the training history (most recent first).
    hist = [art.item_ids.index(item), *art.seen_items(10).tolist()]
    assert_topk(after["items"], art, user_tower_vector(art, hist), hist, 5)
    assert item not in {i["item_id"] for i in after["items"]}


def test_duplicate_event_id_is_recorded_once(env):
    """An event id is an idempotency key of its user: the same (user, id) twice is one event; another user's event
    with the same id is its own (dedupe keys live in the user's shard slot)."""
    http = env["http"]
    user, other = env["art"].user_ids[11], env["art"].user_ids[13]
    ev = {"user_id": user, "item_id": env["art"].item_ids[4], "type": "view", "event_id": "dup-" + uuid.uuid4().hex}
    assert http.post("/events", json=ev).status_code == 202
    assert http.post("/events", json=ev).status_code == 202
    assert http.post("/events", json={**ev, "user_id": other}).status_code == 202
    found = [f[b"user_id"].decode() for _, f in all_streams(env) if f[b"event_id"] == ev["event_id"].encode()]
    assert sorted(found) == sorted([user, other])


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
    http, r, art = env["http"], env["redis"], env["art"]
    user = art.user_ids[12]
    for i in range(55):
        http.post("/events", json={"user_id": user, "item_id": art.item_ids[i], "type": "view"})
    hist = r.lrange(env["layout"].user_key("hist", user), 0, -1)
    assert len(hist) == 50 and hist == [i.encode() for i in art.item_ids[54:4:-1]]


def test_concurrent_events_group_commit_each_once_in_order(env):
    """Many events in flight at once share pipelined round trips (group commit): every accepted event is in
    the stream exactly once, a duplicate id inside the same burst included, and each user's events keep the
    order in which they were accepted."""
    import asyncio

    http, r, items = env["http"], env["redis"], env["art"].item_ids
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
    ids = [f[b"event_id"].decode() for _, f in all_streams(env) if f[b"event_id"].decode().startswith(run + "-")]
    assert sorted(ids) == sorted(f"{run}-{i}" for i in range(300))
    after = _batch_metric(http)
    batches, grouped = after[0] - before[0], after[1] - before[1]
    assert grouped == 320 and batches < 320, (batches, grouped)  # some round trips carried several events
    for u in range(7):  # per user: the history list holds the newest first, as the stream order says
        user = f"gc-{run}-{u}"
        in_stream = [f[b"item_id"].decode() for _, f in stream_of(env, user) if f[b"user_id"].decode() == user]
        assert in_stream, user
        hist = [x.decode() for x in r.lrange(env["layout"].user_key("hist", user), 0, -1)]
        assert hist == in_stream[::-1][: len(hist)]


def _batch_metric(http: httpx.Client) -> tuple[float, float]:
    """(round trips, events) of the group-commit histogram, from /metrics."""
    text = http.get("/metrics").text
    get = lambda name: sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name))  # noqa: E731
    return get("mrdib_event_batch_size_count"), get("mrdib_event_batch_size_sum")


def test_pipelined_scripts_survive_nodes_that_forgot_them(env, redis_cluster):
    """Cluster: a node restarted (or failed over to a replica) has no scripts loaded, and a cluster pipeline does not
    load them (redis-py's single-Redis pipeline does): a batch of event scripts then gets NOSCRIPT from that node.
    `RedisLink.run_scripts` loads them and completes the batch in order, each call run once."""
    import asyncio

    from service.metrics import Metrics
    from service.redis_link import RedisLink

    if env["mode"] != "cluster":
        pytest.skip("cluster only (SCRIPT FLUSH would also touch the single Redis everyone's tests share)")
    r = env["redis"]
    settings = Settings(artifacts=".", redis_url=redis_cluster.url, redis_mode="cluster",
                        redis_key_prefix=f"ns-{uuid.uuid4().hex[:6]}:")
    lua = "redis.call('RPUSH', KEYS[1], ARGV[1]) return redis.call('LLEN', KEYS[1])"
    users = [f"user-{k}" for k in range(24)]
    keys = [settings.layout.user_key("hist", u) for u in users]

    async def run() -> list:
        link = RedisLink(settings, Metrics())
        script = link.client.register_script(lua)
        try:
            await link.run_scripts([(script, [keys[0]], ["warm-up"])])  # loaded everywhere, then forgotten:
            for node in r.get_nodes():
                r.execute_command("SCRIPT FLUSH", target_nodes=node)
            return await link.run_scripts([(script, [k], [f"x{n}"]) for n, k in enumerate(keys)])
        finally:
            await link.close()

    assert asyncio.run(run()) == [2] + [1] * 23
    assert [r.lrange(k, 0, -1) for k in keys] == [[b"warm-up", b"x0"], *([f"x{n}".encode()] for n in range(1, 24))]
    for k in keys:
        r.delete(k)


def test_item_keys_of_the_untagged_layout_are_moved_at_start(env, tmp_path, build_artifact):
    """Single Redis: admin item changes written by a version before the hash-tagged layout (`<prefix>items:side`
    ...) are moved to `<prefix>{items}:...` by the first worker that starts, and served."""
    from mrdib.side_items import SideItem, encode_side

    if env["mode"] != "single":
        pytest.skip("the untagged layout only ever worked on a single Redis")
    r, art = env["redis"], env["art"]
    prefix = f"mig-{uuid.uuid4().hex[:8]}:"
    feats = {m.name: np.full(m.dim, 0.3, np.float32) for m in art.manifest.modalities}
    r.hset(f"{prefix}items:side", "legacy-sku", encode_side(SideItem(feats, datetime.now(UTC))))
    r.sadd(f"{prefix}items:deleted", art.item_ids[3])
    r.set(f"{prefix}items:ver", 7)
    root = tmp_path / "artifacts"
    build_artifact(root)
    s = Settings(artifacts=root, redis_url=env["url"], redis_key_prefix=prefix,
                 stream=prefix + "events", wal_path=tmp_path / "wal.jsonl", poll_interval_s=0, cpu_threads=2)
    try:
        with ServerThread(create_app(s)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
            info = http.get("/model").json()
            assert (info["side_index_size"], info["hidden_items"]) == (1, 1)
            assert http.get("/items/legacy-sku/similar", params={"k": 3}).status_code == 200
        side, deleted, ver = s.layout.item_keys()
        assert r.hexists(side, "legacy-sku") and r.sismember(deleted, art.item_ids[3]) and r.get(ver) == b"7"
        assert not r.exists(*s.layout.legacy_item_keys())
    finally:
        for k in [*s.layout.item_keys(), *s.layout.legacy_item_keys()]:
            r.delete(k)
