"""Admin item changes while Redis is down: accepted (202, `pending_sync`), applied at once, kept in the local
item WAL, replayed into Redis when it is back, and then seen by the workers of other hosts.

Real HTTP (uvicorn in threads), a private redis-server (AOF on, its own port and temp dir) that the test stops
and restarts. Three workers:
- a: receives the changes;
- c: shares a's WAL files, like another `--workers` process of the same host: it applies the pending changes
  during the outage already (it reads the same file);
- b: its own WAL files, like a worker of another host: it can only learn the changes through Redis, so what it
  sees after the restart proves the replay.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from mrdib.artifact.store import load_artifact
from mrdib.redis_keys import KeyLayout
from service.api import create_app
from service.items import ItemChanges, PendingChange, RedisItemLog, SideItem, decode_side
from service.metrics import Metrics
from service.redis_link import RedisLink
from service.settings import Settings
from tests._service_helpers import PrivateRedis, ServerThread, item_features, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.skipif(shutil.which("redis-server") is None,
                                                    reason="redis-server not installed")]
TOKEN = "outage-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PREFIX = "ao:"
SIDE, DELETED, VER = KeyLayout(PREFIX).item_keys()


def _settings(root: Path, url: str, wal: Path) -> Settings:
    return Settings(artifacts=root, redis_url=url, redis_key_prefix=PREFIX, stream=PREFIX + "events", wal_path=wal,
                    admin_token=TOKEN, poll_interval_s=0, redis_check_interval_s=0.1, item_sync_interval_s=0.05,
                    redis_socket_timeout_s=0.2, redis_connect_timeout_s=0.2, cpu_threads=2)


def _ids(http: httpx.Client, user: str) -> set[str]:
    """Every item id the worker serves to a known user (k covers catalogue + side items), checked to be a 200."""
    r = http.post("/recommend", json={"user_id": user, "k": 1000, "exclude_seen": False})
    assert r.status_code == 200, r.text
    return {i["item_id"] for i in r.json()["items"]}


def _change(http: httpx.Client, method: str, item: str, features: dict | None = None) -> httpx.Response:
    kw = {"json": {"features": features}} if features is not None else {}
    r = http.request(method, f"/items/{item}", headers=AUTH, **kw)
    assert r.status_code < 500, f"{method} {item}: {r.status_code} {r.text}"
    return r


def test_admin_item_changes_survive_a_redis_outage(tmp_path, build_artifact):
    root = tmp_path / "artifacts"
    version = build_artifact(root)
    art = load_artifact(root / version)
    catalogue, i0, user = art.item_ids, art.item_ids[0], art.user_ids[0]  # i0: a catalogue item to hide
    rs = PrivateRedis()
    rs.start()
    wal_ac = tmp_path / "host1" / "events.jsonl"
    item_wal = tmp_path / "host1" / "events.items.jsonl"  # the default: beside the event WAL
    apps = [create_app(_settings(root, rs.url, w)) for w in (wal_ac, tmp_path / "host2" / "events.jsonl", wal_ac)]
    assert apps[0].state.ctx.settings.item_wal_file == item_wal
    try:
        with ServerThread(apps[0]) as sa, ServerThread(apps[1]) as sb, ServerThread(apps[2]) as sc, \
                httpx.Client(base_url=sa.url, timeout=10) as a, httpx.Client(base_url=sb.url, timeout=10) as b, \
                httpx.Client(base_url=sc.url, timeout=10) as c:
            # Redis up: shared at once, 200, not pending.
            r = _change(a, "PUT", "before-outage", item_features(1))
            assert r.status_code == 200 and r.json()["pending_sync"] is False
            wait_for(lambda: "before-outage" in _ids(b, user), what="worker b to index before-outage", timeout=15)
            assert _ids(b, user) == {*catalogue, "before-outage"}

            rs.stop()
            # Redis down: every change is accepted, applied by `a` at once, and says it waits for Redis.
            r = _change(a, "PUT", "fresh-1", item_features(2))
            assert r.status_code == 202, r.text
            assert r.json() | {"model_version": None} == {"model_version": None, "item_id": "fresh-1",
                                                          "status": "indexed", "side_index_size": 2,
                                                          "pending_sync": True}
            assert "fresh-1" in _ids(a, user)
            assert a.get("/items/fresh-1/similar", params={"k": 3}).status_code == 200
            r = _change(a, "DELETE", i0)
            assert (r.status_code, r.json()["status"], r.json()["pending_sync"]) == (202, "deleted", True)
            assert i0 not in _ids(a, user) and a.get(f"/items/{i0}/similar").status_code == 404
            # A side item put before the outage (known from the last Redis snapshot) can be deleted too.
            assert _change(a, "DELETE", "before-outage").status_code == 202
            # Order is kept per item: the last change wins.
            assert _change(a, "PUT", "fresh-2", item_features(3)).status_code == 202
            assert _change(a, "DELETE", "fresh-2").status_code == 202
            # Unknown anywhere: still a clear 404 (the hide is recorded all the same, as with Redis up; the
            # PUT that follows wins).
            assert _change(a, "DELETE", "fresh-3").status_code == 404
            assert _change(a, "PUT", "fresh-3", item_features(4)).status_code == 202
            new_1 = item_features(5)
            assert _change(a, "PUT", "fresh-1", new_1).status_code == 202  # changed again: this version wins
            # Bad input is still a 4xx while Redis is down, and records nothing.
            assert _change(a, "PUT", "bad", {"text": [1.0]}).status_code == 422

            served = _ids(a, user)
            assert served == {*catalogue, "fresh-1", "fresh-3"} - {i0}
            assert a.get("/readyz").json()["redis"] == "degraded"
            lines = [json.loads(x) for x in item_wal.read_text().splitlines()]
            assert [(x["op"], x["item_id"]) for x in lines] == [
                ("put", "fresh-1"), ("delete", i0), ("delete", "before-outage"), ("put", "fresh-2"),
                ("delete", "fresh-2"), ("delete", "fresh-3"), ("put", "fresh-3"), ("put", "fresh-1")]
            assert "mrdib_item_changes_pending 8.0" in a.get("/metrics").text
            # c shares the host's WAL: it applies the pending changes without Redis.
            wait_for(lambda: _ids(c, user) == served, timeout=15,
                     what="worker c (same host) to apply the pending changes")
            # b (another host) cannot know them yet.
            assert _ids(b, user) == {*catalogue, "before-outage"}

            rs.start()  # same port, same AOF directory
            db = redis.Redis.from_url(rs.url)
            wait_for(lambda: item_wal.exists() and item_wal.read_text() == "" and db.hexists(SIDE,
                                                                                             "fresh-1"),
                     timeout=15, what="the item WAL to be replayed into Redis")
            side = {k.decode(): decode_side(v) for k, v in db.hgetall(SIDE).items()}
            assert sorted(side) == ["fresh-1", "fresh-3"]
            for m, v in new_1.items():  # the last PUT of fresh-1 won
                assert np.allclose(side["fresh-1"].features[m], v, atol=1e-6)
            assert {x.decode() for x in db.smembers(DELETED)} == {i0, "before-outage", "fresh-2"}

            # The other host's worker now applies them, through Redis only.
            wait_for(lambda: _ids(b, user) == served, timeout=15, what="worker b to apply the replayed changes")
            assert b.get("/items/fresh-2/similar").status_code == 404
            for http in (a, b, c):
                wait_for(lambda http=http: http.get("/readyz").json()["redis"] == "ok", what="redis ok", timeout=15)
                assert "mrdib_item_changes_pending 0.0" in http.get("/metrics").text
            # Back to normal: shared at once, not pending.
            r = _change(b, "PUT", "after-outage", item_features(6))
            assert r.status_code == 200 and r.json()["pending_sync"] is False
            wait_for(lambda: "after-outage" in _ids(a, user), what="worker a to index after-outage", timeout=15)
            assert item_wal.read_text() == ""
    finally:
        rs.close()


def test_item_wal_replay_keeps_order_and_sets_a_torn_line_aside(tmp_path):
    """The replay itself, on a WAL written by hand: the changes reach Redis in file order, an unreadable
    (torn) last line is kept in `.rejected` instead of being lost or blocking the others, the file is emptied."""
    rs = PrivateRedis()
    rs.start()
    wal = tmp_path / "items.jsonl"
    item = SideItem({m: np.asarray(v, np.float32) for m, v in item_features(9).items()},
                    datetime(2026, 1, 2, tzinfo=UTC))
    lines = [PendingChange.put("x", item).to_line(), PendingChange("delete", "y").to_line(),
             PendingChange("delete", "x").to_line(), PendingChange.put("x", item).to_line(), '{"op": "put", "ite']
    wal.write_text("\n".join(lines) + "\n")

    async def replay() -> int:
        link = RedisLink(Settings(redis_url=rs.url, redis_key_prefix=PREFIX, wal_path=tmp_path / "e.jsonl"),
                         Metrics())
        try:
            log = RedisItemLog(link, wal)
            # Link not up yet (as while Redis is down): the sync view is the file folded in order, nothing sent.
            view = await log.newer_than(ItemChanges())
            assert view is not None and (view.pending, sorted(view.side), view.deleted) == (4, ["x"], {"y"})
            assert await link.probe()
            return await log.replay()
        finally:
            await link.close()

    try:
        assert asyncio.run(replay()) == 4
        db = redis.Redis.from_url(rs.url)
        stored = decode_side(db.hget(SIDE, "x"))
        assert stored.put_at == item.put_at  # the put time of the original request, not of the replay
        assert {x.decode() for x in db.smembers(DELETED)} == {"y"}  # x: deleted, then put again
        assert int(db.get(VER)) == 4
        assert wal.read_text() == ""
        assert wal.with_suffix(".rejected").read_text() == lines[-1] + "\n"
    finally:
        rs.close()


def test_change_sent_but_not_read_back_is_not_left_pending(tmp_path: Path) -> None:
    """Redis takes the waiting changes and the new one, then fails before the snapshot is read back: the
    changes are in Redis, so the file must be emptied (a later replay would write them over newer changes made
    elsewhere) and the answer must not say pending; this worker applies them at once."""
    rs = PrivateRedis()
    rs.start()
    wal = tmp_path / "items.jsonl"
    item = SideItem({m: np.asarray(v, np.float32) for m, v in item_features(3).items()},
                    datetime(2026, 1, 2, tzinfo=UTC))
    wal.write_text(PendingChange.put("from-outage", item).to_line() + "\n")

    async def scenario() -> tuple[ItemChanges, bool]:
        link = RedisLink(Settings(redis_url=rs.url, redis_key_prefix=PREFIX, wal_path=tmp_path / "e.jsonl"),
                         Metrics())
        try:
            assert await link.probe()
            log = RedisItemLog(link, wal)

            async def lost_connection() -> ItemChanges:
                raise redis.exceptions.ConnectionError("connection lost after the changes were sent")

            log.snapshot = lost_connection  # type: ignore[method-assign]
            return await log.delete("some-item")
        finally:
            await link.close()

    try:
        changes, _had = asyncio.run(scenario())
        assert changes.pending == 0  # answered 200, not 202 pending_sync
        assert "from-outage" in changes.side and "some-item" in changes.deleted
        assert wal.read_text() == ""
        db = redis.Redis.from_url(rs.url)
        assert db.hexists(SIDE, "from-outage") and db.sismember(DELETED, "some-item")
    finally:
        rs.close()
