"""Display metadata in answers (`fields` -> `meta`) and on PUT /items, over real HTTP (embedded mode), and through
Redis to a second worker. Expected values are read from the served artifact's own item_meta.jsonl."""

from __future__ import annotations

import os
import uuid

import httpx
import pytest
import redis

from mrdib.artifact.store import LoadedArtifact, load_artifact
from mrdib.item_meta import select_fields
from service.api import create_app
from service.settings import Settings
from tests._service_helpers import ServerThread, item_features, redis_available, wait_for
from tests.test_service_api import AUTH, TOKEN, _settings, served

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, build_artifact):
    root = tmp_path_factory.mktemp("artifacts-meta")
    return root, build_artifact(root)


@pytest.fixture(scope="module")
def art(artifact) -> LoadedArtifact:
    root, v = artifact
    a = load_artifact(root / v)
    assert a.item_meta is not None and a.manifest.item_meta_fields, "the test artifact has display fields"
    return a


@pytest.fixture()
def client(artifact, tmp_path):
    with served(_settings(artifact[0], tmp_path)) as c:
        yield c


def _meta(art: LoadedArtifact, item_id: str, fields: list[str]) -> dict:
    return select_fields(art.item_meta[art.item_ids.index(item_id)], fields)


def test_model_lists_the_fields(client, art):
    assert client.get("/model").json()["item_meta_fields"] == art.manifest.item_meta_fields


def test_recommend_returns_the_requested_fields(client, art):
    fields = art.manifest.item_meta_fields[:2]
    body = client.post("/recommend", json={"user_id": art.user_ids[2], "k": 30, "fields": fields}).json()
    assert len(body["items"]) == 30
    for it in body["items"]:
        assert it["meta"] == _meta(art, it["item_id"], fields)
    assert any(it["meta"] for it in body["items"])
    # The same ranking as without fields, and no `meta` key at all then.
    plain = client.post("/recommend", json={"user_id": art.user_ids[2], "k": 30}).json()
    assert [{k: v for k, v in it.items() if k != "meta"} for it in body["items"]] == plain["items"]
    assert all("meta" not in it for it in plain["items"])
    # An item without metadata (a new one PUT without any) answers {}; popular answers carry meta too.
    assert client.put("/items/sku-bare", json={"features": item_features(2)}, headers=AUTH).status_code == 200
    assert client.get("/items/sku-bare/similar", params={"fields": ",".join(fields)}).json()["meta"] == {}
    anon = client.post("/recommend", json={"history": [art.item_ids[0]], "k": art.manifest.n_items + 1,
                                           "fields": fields}).json()
    assert {it["item_id"]: it["meta"] for it in anon["items"]}["sku-bare"] == {}
    pop = client.post("/recommend", json={"k": 3, "fields": fields}).json()
    assert pop["source"] == "popular" and all(it["meta"] == _meta(art, it["item_id"], fields) for it in pop["items"])


def test_bad_fields_are_422_naming_them(client, art):
    r = client.post("/recommend", json={"user_id": art.user_ids[1], "fields": ["titel"]})
    assert r.status_code == 422 and "unknown display fields ['titel']" in r.json()["detail"]
    assert art.manifest.item_meta_fields[0] in r.json()["detail"]  # says what there is
    r = client.post("/recommend", json={"user_id": art.user_ids[1], "fields": ["bad name"]})
    assert r.status_code == 422 and r.json()["detail"].startswith("fields.0:")
    r = client.post("/recommend", json={"user_id": art.user_ids[1], "fields": [f"f{k}" for k in range(40)]})
    assert r.status_code == 422
    r = client.get(f"/items/{art.item_ids[0]}/similar", params={"fields": "title,no such"})
    assert r.status_code == 422 and "invalid field names ['no such']" in r.json()["detail"]
    r = client.get(f"/items/{art.item_ids[0]}/similar", params={"fields": "titel"})
    assert r.status_code == 422 and "unknown display fields ['titel']" in r.json()["detail"]


def test_similar_returns_the_requested_fields(client, art):
    fields = art.manifest.item_meta_fields
    item = art.item_ids[10]
    body = client.get(f"/items/{item}/similar", params={"k": 5, "fields": ",".join(fields) + ", "}).json()
    assert body["meta"] == _meta(art, item, fields) and body["meta"]
    assert len(body["items"]) == 5
    for it in body["items"]:
        assert it["meta"] == _meta(art, it["item_id"], fields)
    plain = client.get(f"/items/{item}/similar", params={"k": 5, "fields": ""}).json()
    assert "meta" not in plain and all("meta" not in it for it in plain["items"])
    assert [it["item_id"] for it in plain["items"]] == [it["item_id"] for it in body["items"]]


def test_put_item_with_metadata(client, art):
    fields = art.manifest.item_meta_fields
    # A new item with display fields, one of them new to the catalogue.
    meta = {"title": "Brand-new lamp", "price": 19.5, "colours": ["red", "blue"]}
    r = client.put("/items/sku-lamp", json={"features": item_features(3), "meta": meta}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert client.get("/model").json()["item_meta_fields"] == sorted({*fields, "price", "colours"})
    got = client.get("/items/sku-lamp/similar", params={"k": 3, "fields": "title,price,colours"}).json()
    assert got["meta"] == meta
    body = client.post("/recommend", json={"user_id": art.user_ids[4], "k": art.manifest.n_items + 1,
                                           "fields": ["title", "price"]}).json()
    lamp = next(it for it in body["items"] if it["item_id"] == "sku-lamp")
    assert lamp["meta"] == {"title": "Brand-new lamp", "price": 19.5}

    # A catalogue item PUT again with features only keeps its catalogue fields; with `meta` they are replaced.
    known = art.item_ids[12]
    assert client.put(f"/items/{known}", json={"features": item_features(4)}, headers=AUTH).status_code == 200
    assert client.get(f"/items/{known}/similar", params={"fields": ",".join(fields)}).json()["meta"] == \
        _meta(art, known, fields)
    r = client.put(f"/items/{known}", json={"features": item_features(4), "meta": {"title": "Renamed"}},
                   headers=AUTH)
    assert r.status_code == 200
    assert client.get(f"/items/{known}/similar", params={"fields": ",".join(fields)}).json()["meta"] == {
        "title": "Renamed"}


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"title": {"nested": 1}}, "meta.title: unsupported value type dict"),
        ({"title": "x" * 3000}, "meta.title: string of 3000 characters"),
        ({"bad key": 1}, "field name 'bad key'"),
        ({"id": "x"}, "'id' is the item's id"),
        ({"tags": [1, 2]}, "meta.tags[0]: list entries must be strings"),
        ([1, 2], "expected a JSON object of display fields"),
    ],
)
def test_put_item_refuses_bad_metadata(client, art, meta, message):
    r = client.put("/items/sku-bad", json={"features": item_features(5), "meta": meta}, headers=AUTH)
    assert r.status_code == 422 and message in r.json()["detail"], r.text
    assert client.get("/items/sku-bad/similar").status_code == 404  # nothing was indexed


@pytest.mark.redis
def test_put_metadata_reaches_another_worker_through_redis(artifact, tmp_path):
    if not redis_available(URL):
        pytest.skip(f"no Redis at {URL}")
    root, _ = artifact
    prefix = f"mrdib-test-{uuid.uuid4().hex[:8]}:"

    def settings(name: str) -> Settings:
        return Settings(artifacts=root, redis_url=URL, redis_key_prefix=prefix, stream=prefix + "events",
                        wal_path=tmp_path / f"wal-{name}.jsonl", poll_interval_s=0, item_sync_interval_s=0.05,
                        admin_token=TOKEN, cpu_threads=2)

    try:
        with ServerThread(create_app(settings("a"))) as a_srv, ServerThread(create_app(settings("b"))) as b_srv, \
                httpx.Client(base_url=a_srv.url, timeout=10) as a, httpx.Client(base_url=b_srv.url, timeout=10) as b:
            meta = {"title": "Shared through Redis", "tags": ["x"]}
            r = a.put("/items/sku-shared", json={"features": item_features(9), "meta": meta}, headers=AUTH)
            assert r.status_code == 200 and r.json()["pending_sync"] is False

            def seen_by_b() -> bool:
                got = b.get("/items/sku-shared/similar", params={"fields": "title,tags"})
                return got.status_code == 200 and got.json()["meta"] == meta

            wait_for(seen_by_b, what="worker b to serve sku-shared with its metadata")
    finally:
        client = redis.Redis.from_url(URL)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
