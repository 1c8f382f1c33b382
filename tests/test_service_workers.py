"""Several workers over one Redis: admin item changes reach every worker, and an event invalidates the cached
user state of every model version (two real uvicorn servers in this process, sharing the real Redis at
REDIS_URL / 127.0.0.1:6379 under a unique key prefix, exactly like two `--workers` processes would)."""

from __future__ import annotations

import asyncio
import os
import uuid

import httpx
import numpy as np
import pytest
import redis

from mrdib.artifact.store import load_artifact
from mrdib.redis_keys import KeyLayout
from service.api import create_app
from service.cache import LocalHistory, RedisUserState
from service.metrics import Metrics
from service.redis_link import RedisLink
from service.settings import Settings
from tests._service_helpers import ServerThread, item_features, redis_available, wait_for

pytestmark = pytest.mark.redis
TOKEN = "workers-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture()
def prefix():
    if not redis_available(URL):
        pytest.skip(f"no Redis at {URL}")
    p = f"mrdib-test-{uuid.uuid4().hex[:8]}:"
    yield p
    r = redis.Redis.from_url(URL)
    keys = list(r.scan_iter(match=p + "*"))
    if keys:
        r.delete(*keys)


def _settings(root, tmp, prefix: str, name: str) -> Settings:
    return Settings(artifacts=root, redis_url=URL, redis_key_prefix=prefix, stream=prefix + "events",
                    wal_path=tmp / f"wal-{name}.jsonl", poll_interval_s=0, redis_check_interval_s=0.2,
                    item_sync_interval_s=0.05, admin_token=TOKEN, cpu_threads=2)


def _ids(http: httpx.Client, **body) -> list[str]:
    return [i["item_id"] for i in http.post("/recommend", json={"k": 1000, **body}).json()["items"]]


def test_item_changes_reach_every_worker(tmp_path, prefix, build_artifact):
    root = tmp_path / "artifacts"
    art = load_artifact(root / build_artifact(root))
    u1, i0 = art.user_ids[1], art.item_ids[0]
    a_app, b_app = (create_app(_settings(root, tmp_path, prefix, n)) for n in "ab")
    with ServerThread(a_app) as a_srv, ServerThread(b_app) as b_srv, \
            httpx.Client(base_url=a_srv.url, timeout=10) as a, httpx.Client(base_url=b_srv.url, timeout=10) as b:
        r = a.put("/items/fresh-1", json={"features": item_features(7)}, headers=AUTH)
        assert r.status_code == 200 and r.json()["side_index_size"] == 1
        assert "fresh-1" in _ids(a, user_id=u1)  # the receiving worker: at once
        wait_for(lambda: "fresh-1" in _ids(b, user_id=u1), what="worker b to index fresh-1")
        assert b.get("/items/fresh-1/similar", params={"k": 3}).status_code == 200
        assert b.get("/model").json()["side_index_size"] == 1

        assert b.delete(f"/items/{i0}", headers=AUTH).status_code == 200
        assert i0 not in _ids(b)
        wait_for(lambda: i0 not in _ids(a), what="worker a to hide i0")
        assert a.get(f"/items/{i0}/similar").status_code == 404
        # Deleting through the other worker than the one that indexed it works the same way.
        assert a.delete("/items/fresh-1", headers=AUTH).status_code == 200
        wait_for(lambda: "fresh-1" not in _ids(b, user_id=u1), what="worker b to drop fresh-1")
        assert a.put(f"/items/{i0}", json={"features": item_features(8)}, headers=AUTH).status_code == 200
        wait_for(lambda: i0 in _ids(b, user_id=u1, exclude_seen=False), what="worker b to show i0 again")

        # A worker started after the changes applies them before its first request.
        with ServerThread(create_app(_settings(root, tmp_path, prefix, "c"))) as c_srv, \
                httpx.Client(base_url=c_srv.url, timeout=10) as c:
            got = _ids(c, user_id=u1, exclude_seen=False)
            assert i0 in got and "fresh-1" not in got and len(got) == art.manifest.n_items
            assert c.get("/model").json()["hidden_items"] == 1  # fresh-1 stays deleted


def test_event_invalidates_every_versions_cache(tmp_path, prefix, build_artifact):
    # Two workers on two different versions (a roll-out in progress), one Redis.
    r1, r2 = tmp_path / "a1", tmp_path / "a2"
    v1, v2 = build_artifact(r1, seed=1), build_artifact(r2, seed=2)
    art = load_artifact(r1 / v1)  # both versions are trained on the same catalogue: same ids
    u3 = art.user_ids[3]
    seen = set(art.seen_items(3).tolist())
    i1 = next(i for r, i in enumerate(art.item_ids) if r not in seen)  # not seen in training: the event makes it so
    with ServerThread(create_app(_settings(r1, tmp_path, prefix, "a"))) as a_srv, \
            ServerThread(create_app(_settings(r2, tmp_path, prefix, "b"))) as b_srv, \
            httpx.Client(base_url=a_srv.url, timeout=10) as a, httpx.Client(base_url=b_srv.url, timeout=10) as b:
        for http, v in ((a, v1), (b, v2)):
            http.post("/recommend", json={"user_id": u3})
            second = http.post("/recommend", json={"user_id": u3}).json()
            assert second["cached"] is True and second["model_version"] == v and second["source"] == "user"
        raw = redis.Redis.from_url(URL)
        assert set(raw.hkeys(KeyLayout(prefix).user_key("uvec", u3))) == {v1.encode(), v2.encode()}

        assert a.post("/events", json={"user_id": u3, "item_id": i1, "type": "click"}).json()["durable_in"] == \
            "redis"
        assert raw.exists(KeyLayout(prefix).user_key("uvec", u3)) == 0  # both versions, not only the one a serves
        after_a = a.post("/recommend", json={"user_id": u3}).json()
        assert after_a["cached"] is False  # the receiving worker: never stale after the 202
        # The other worker drops its near-cache copy on the invalidation message (asynchronous, ~ms).
        wait_for(lambda: b.post("/recommend", json={"user_id": u3}).json()["cached"] is False,
                 what="worker b to see the event")
        body = b.post("/recommend", json={"user_id": u3, "k": 1000}).json()
        assert i1 not in [i["item_id"] for i in body["items"]]  # the event's item now counts as seen


def test_vector_computed_before_an_event_is_not_cached_after_it(prefix):
    settings = Settings(redis_url=URL, redis_key_prefix=prefix)

    async def scenario() -> tuple[bytes | None, bytes | None]:
        link = RedisLink(settings, Metrics())
        assert await link.probe()
        state = RedisUserState(link, LocalHistory(50, 100), 60, 50, backlog=lambda: 0)
        try:
            before = await state.get("v", "ux", 4)  # miss: reads history + event counter
            await link.client.incr(link.uev_key("ux"))  # an event lands while the vector is being computed
            await state.put_vector("v", "ux", np.ones(4, np.float32), before)
            stale = await link.client.hget(link.uvec_key("ux"), "v")
            fresh_state = await state.get("v", "ux", 4)
            await state.put_vector("v", "ux", np.ones(4, np.float32), fresh_state)
            fresh = await link.client.hget(link.uvec_key("ux"), "v")
            return stale, fresh
        finally:
            await link.close()

    stale, fresh = asyncio.run(scenario())
    assert stale is None and fresh is not None
