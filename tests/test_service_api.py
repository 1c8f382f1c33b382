"""Service routes over real HTTP (uvicorn on a loopback port, lifespan included), in embedded mode (no Redis) and
on a real Redis Cluster (the `client` fixture runs each test in both).

The artifact is the session's trained one (tests/_service_helpers.py); expected answers come from its own data:
exact search over its vectors, its ONNX user tower, its popularity counts and training histories."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from mrdib.artifact.store import LoadedArtifact, load_artifact
from mrdib.redis_keys import sync_client
from service.api import create_app
from service.settings import Settings
from tests._service_helpers import (
    COMPONENTS,
    ServerThread,
    assert_topk,
    cosine_neighbours,
    cosine_similarities,
    item_features,
    user_tower_vector,
)

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, build_artifact) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("artifacts")
    return root, build_artifact(root)


def _settings(root: Path, tmp: Path, **kw) -> Settings:
    base = dict(artifacts=root, redis_url=None, wal_path=tmp / "events.jsonl", admin_token=TOKEN,
                poll_interval_s=0, max_body_bytes=8192, max_request_history=50, cpu_threads=2)
    base.update(kw)
    return Settings(**base)


@contextlib.contextmanager
def served(settings: Settings) -> Iterator[httpx.Client]:
    """The app under a real uvicorn server; a client for it (a server-side exception would be a real 500)."""
    app = create_app(settings)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        c.app = app  # for the few tests that reach into the running app (same process) to set up a fault
        yield c


@pytest.fixture(params=["embedded", "cluster"])
def client(request, artifact, tmp_path):
    """The service without Redis (embedded), and on a real 3-master Redis Cluster (the session's `redis_cluster`,
    under a key prefix of this test's own); `client.mode` says which."""
    root, _ = artifact
    extra = {}
    if request.param == "cluster":
        # generous timeouts: these tests check answers, not outages (two shared cores can stall a reply 0.25 s)
        extra = dict(redis_url=request.getfixturevalue("redis_cluster").url, redis_mode="cluster",
                     redis_key_prefix=f"api-{uuid.uuid4().hex[:10]}:", redis_check_interval_s=0.2,
                     redis_socket_timeout_s=2.0, redis_connect_timeout_s=2.0)
    with served(_settings(root, tmp_path, **extra)) as c:
        c.mode = request.param
        yield c


@pytest.fixture()
def embedded_client(artifact, tmp_path):
    """Embedded mode only: for input validation, which answers before any Redis is touched."""
    root, _ = artifact
    with served(_settings(root, tmp_path)) as c:
        c.mode = "embedded"
        yield c


@pytest.fixture(scope="module")
def art(artifact) -> LoadedArtifact:
    root, v = artifact
    return load_artifact(root / v)


def rows_of(art: LoadedArtifact, ids: list[str]) -> list[int]:
    return [art.item_ids.index(i) for i in ids]


def test_health_ready_model_metrics(client, artifact, art):
    _, v = artifact
    assert client.get("/healthz").json() == {"status": "alive"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["model_version"] == v
    assert r.json()["redis"] == ("disabled" if client.mode == "embedded" else "ok")
    assert client.get("/model").json()["model_version"] == v
    m = client.get("/admin/model", headers=AUTH).json()
    assert m["model_version"] == v and m["components"] == art.manifest.components == COMPONENTS
    assert m["onnx_providers"]["user_tower"] == ["CPUExecutionProvider"] and m["faiss_device"] == "cpu"
    client.post("/recommend", json={"user_id": art.user_ids[1]})
    text = client.get("/metrics").text
    assert f'mrdib_model_info{{version="{v}"}} 1.0' in text
    assert f'mrdib_index_size{{index="ip"}} {float(art.manifest.n_items)}' in text
    assert 'mrdib_request_seconds_count{method="POST",route="/recommend",status="200"}' in text
    assert "mrdib_event_backlog 0.0" in text


def test_known_user_excludes_seen_and_matches_exact_scores(client, art):
    user = art.user_ids[2]
    r = client.post("/recommend", json={"user_id": user, "k": 10})
    body = r.json()
    assert r.status_code == 200 and body["source"] == "user" and body["model_version"] == art.manifest.model_version
    seen = art.seen_items(2)
    assert_topk(body["items"], art, art.user_vectors[2], seen, 10)  # scores exact, descending, seen excluded
    # exclude_seen=false lets the training items back in: the exact top-k over the whole catalogue, which the
    # trained vector fills partly with the user's own training items.
    got = client.post("/recommend", json={"user_id": user, "k": 40, "exclude_seen": False}).json()["items"]
    assert_topk(got, art, art.user_vectors[2], [], 40)
    assert {art.item_ids[r] for r in seen} & {i["item_id"] for i in got}


def test_exclude_list(client, art):
    user = art.user_ids[3]
    top = [i["item_id"] for i in client.post("/recommend", json={"user_id": user, "k": 5}).json()["items"]]
    again = client.post("/recommend", json={"user_id": user, "k": 5, "exclude": top[:2]}).json()["items"]
    assert not {i["item_id"] for i in again} & set(top[:2])
    assert_topk(again, art, art.user_vectors[3], [*art.seen_items(3), *rows_of(art, top[:2])], 5)


def test_lru_cache_hit_after_miss(client, art):
    first = client.post("/recommend", json={"user_id": art.user_ids[4]}).json()
    second = client.post("/recommend", json={"user_id": art.user_ids[4]}).json()
    assert first["cached"] is False and second["cached"] is True
    assert first["items"] == second["items"]
    assert 'mrdib_user_cache_total{result="hit"} 1.0' in client.get("/metrics").text


def test_unknown_user_with_history_and_unknown_ids(client, art):
    hist = [art.item_ids[7], "nope-1", art.item_ids[12], "nope-2"]
    body = client.post("/recommend", json={"user_id": "stranger", "history": hist, "k": 8}).json()
    assert body["source"] == "history" and body["cached"] is False
    assert body["unknown_items"] == ["nope-1", "nope-2"]
    # The artifact's own user tower over the known items, in the request's order (most recent first).
    assert_topk(body["items"], art, user_tower_vector(art, [7, 12]), [7, 12], 8)
    anon = client.post("/recommend", json={"history": [art.item_ids[7], art.item_ids[12]], "k": 8}).json()
    assert anon["items"] == body["items"]


def test_popularity_fallback(client, art):
    body = client.post("/recommend", json={"k": 3}).json()
    assert body["source"] == "popular"
    # The three largest training counts, largest first, each item scored by its share of all training interactions.
    counts = [int(art.item_popularity[art.item_ids.index(i["item_id"])]) for i in body["items"]]
    total = int(art.item_popularity.sum())
    assert [i["score"] for i in body["items"]] == pytest.approx([c / total for c in counts])
    assert counts == sorted(art.item_popularity.tolist(), reverse=True)[:3]
    assert body["items"][0]["score"] == pytest.approx(float(art.item_popularity.max()) / total)
    only_unknown = client.post("/recommend", json={"user_id": "ghost", "history": ["zzz"]}).json()
    assert only_unknown["source"] == "popular" and only_unknown["unknown_items"] == ["zzz"]
    assert 'mrdib_fallbacks_total{kind="popular"} 2.0' in client.get("/metrics").text


def test_explain_shares_are_component_dot_products(client, art):
    body = client.post("/recommend", json={"user_id": art.user_ids[5], "k": 4, "explain": True}).json()
    u = art.user_vectors[5]
    assert len(body["items"]) == 4
    for it in body["items"]:
        assert list(it["explain"]) == art.manifest.components
        assert sum(it["explain"].values()) == pytest.approx(1.0, abs=1e-4)
        row = art.item_ids.index(it["item_id"])
        contrib = art.item_components[:, row, :] @ u
        assert it["score"] == pytest.approx(float(contrib.sum()), rel=1e-4)
        for c, name in enumerate(art.manifest.components):
            assert it["explain"][name] == pytest.approx(float(contrib[c] / contrib.sum()), rel=1e-3, abs=1e-5)
    plain = client.post("/recommend", json={"user_id": art.user_ids[5], "k": 4}).json()
    assert "explain" not in plain["items"][0]


def test_event_changes_next_recommendation(client, art, tmp_path):
    user = art.user_ids[0]
    before = client.post("/recommend", json={"user_id": user, "k": 10}).json()
    assert before["source"] == "user"
    client.post("/recommend", json={"user_id": user, "k": 10})  # now cached
    # Clicks on the five unseen items the user's trained vector likes least: far from its taste.
    seen = art.seen_items(0).tolist()
    far = [r for r in np.argsort(art.item_vectors @ art.user_vectors[0]).tolist() if r not in seen][:5]
    clicked = [art.item_ids[r] for r in far]
    for item in clicked:
        r = client.post("/events", json={"user_id": user, "item_id": item, "type": "click"})
        assert r.status_code == 202 and r.json()["durable_in"] == ("file" if client.mode == "embedded" else "redis")
    after = client.post("/recommend", json={"user_id": user, "k": 10}).json()
    assert after["cached"] is False and after["source"] == "user"
    # The user tower over the events (most recent first), then the training history.
    hist_rows = far[::-1] + seen
    assert_topk(after["items"], art, user_tower_vector(art, hist_rows), hist_rows, 10)
    assert after["items"] != before["items"]
    if client.mode == "embedded":
        lines = (tmp_path / "events.jsonl").read_text().splitlines()
        assert [json.loads(x)["item_id"] for x in lines] == clicked
    else:  # in the user's shard stream, in order
        settings = client.app.state.ctx.settings
        entries = sync_client(settings.redis_url, "cluster").xrange(settings.layout.user_stream(user))
        assert [f[b"item_id"].decode() for _, f in entries] == clicked


def test_similar_items(client, art):
    item = art.item_ids[0]
    body = client.get(f"/items/{item}/similar", params={"k": 5}).json()
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == 5 and item not in ids and body["model_version"] == art.manifest.model_version
    # Each score is that item's cosine to the query item, and position by position they are the 5 best cosines
    # (so nothing closer was left out; near-ties may swap places).
    got = np.array([i["score"] for i in body["items"]])
    assert np.allclose(got, cosine_similarities(art, 0)[rows_of(art, ids)], atol=1e-5)
    assert np.allclose(got, cosine_neighbours(art, 0, 5)[1], atol=1e-5)
    r = client.get("/items/unknown-item/similar")
    assert r.status_code == 404 and "unknown-item" in r.json()["detail"]


def test_admin_auth(client, artifact, art, tmp_path):
    feats = {"features": item_features(1)}
    assert client.put("/items/new", json=feats).status_code == 401
    r = client.put("/items/new", json=feats, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and r.json()["detail"] == "invalid admin token"
    assert client.post("/admin/reload", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.post("/admin/reload", headers=AUTH).json()["status"] == "unchanged"
    root, _ = artifact
    with served(_settings(root, tmp_path, admin_token=None)) as off:
        r = off.delete(f"/items/{art.item_ids[1]}", headers=AUTH)
        assert r.status_code == 403 and "MRDIB_ADMIN_TOKEN" in r.json()["detail"]


def test_put_and_delete_items(client, art):
    user, n = art.user_ids[1], art.manifest.n_items
    r = client.put("/items/brand-new", json={"features": item_features(2)}, headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "indexed" and r.json()["side_index_size"] == 1
    everything = [i["item_id"] for i in client.post("/recommend", json={"user_id": user, "k": 1000,
                                                                        "exclude_seen": False}).json()["items"]]
    assert "brand-new" in everything and len(everything) == n + 1
    assert client.get("/items/brand-new/similar", params={"k": 3}).status_code == 200
    # A changed catalogue item is served from the side index, once.
    changed = art.item_ids[3]
    assert client.put(f"/items/{changed}", json={"features": item_features(3)}, headers=AUTH).status_code == 200
    everything = [i["item_id"] for i in client.post("/recommend", json={"user_id": user, "k": 1000,
                                                                        "exclude_seen": False}).json()["items"]]
    assert everything.count(changed) == 1 and len(everything) == n + 1
    # Deleting hides the item everywhere: the most popular one, so the popularity fallback must skip it.
    top = client.post("/recommend", json={"k": 1}).json()["items"][0]["item_id"]
    other = next(i for i in art.item_ids if i not in (top, changed))
    assert client.delete(f"/items/{top}", headers=AUTH).json()["status"] == "deleted"
    assert client.post("/recommend", json={"k": 1}).json()["items"][0]["item_id"] != top
    assert client.get(f"/items/{top}/similar").status_code == 404
    assert top not in {i["item_id"] for i in client.get(f"/items/{other}/similar", params={"k": 1000}).json()["items"]}
    assert top not in [i["item_id"] for i in client.post("/recommend", json={"user_id": user, "k": 1000,
                                                                             "exclude_seen": False}).json()["items"]]
    assert client.delete("/items/brand-new", headers=AUTH).status_code == 200
    assert "brand-new" not in [i["item_id"] for i in client.post("/recommend", json={"k": 1000, "user_id": user})
                               .json()["items"]]
    assert client.delete("/items/never-existed", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "needle"),
    [
        ("post", "/recommend", {"json": {"k": 0}}, 422, "k"),
        ("post", "/recommend", {"json": {"k": 1001}}, 422, "k"),
        ("post", "/recommend", {"json": {"k": "many"}}, 422, "k"),
        ("post", "/recommend", {"json": {"k": True}}, 422, "k"),  # strict: not k=1
        ("post", "/recommend", {"json": {"k": "5"}}, 422, "k"),
        ("post", "/recommend", {"json": {"k": 5.5}}, 422, "k"),  # 5.0 is the integer 5 (JSON Schema)
        ("post", "/recommend", {"json": {"explain": 1}}, 422, "explain"),
        ("post", "/recommend", {"json": {"exclude_seen": "no"}}, 422, "exclude_seen"),
        ("put", "/items/x", {"json": {"features": {"text": [True] * 8, "image": [0.0] * 6}}, "headers": AUTH},
         422, "features"),
        ("post", "/recommend", {"json": {"user_id": "u1", "colour": 1}}, 422, "colour"),
        ("post", "/recommend", {"json": [1, 2]}, 422, ""),
        ("post", "/recommend", {"json": {"history": [f"i{i}" for i in range(51)]}}, 422, "history"),
        ("post", "/recommend", {"json": {"history": [""]}}, 422, "history"),
        ("post", "/recommend", {"content": b'{"user_id": "u1",', "headers": {"content-type": "application/json"}},
         400, "malformed JSON"),
        ("post", "/recommend", {"content": b"user_id=u1", "headers": {"content-type": "text/plain"}},
         415, "content type"),
        ("post", "/recommend", {"content": b'{"k": 3}'}, 415, "content type"),
        ("post", "/recommend", {"json": {"history": ["x" * 200] * 45}}, 413, "exceeds"),
        ("post", "/recommend", {}, 422, "body"),
        # /recommend reads its own body (api._body): the answers FastAPI gives for a `body: Model` parameter
        ("post", "/recommend", {"content": b"null", "headers": {"content-type": "application/json"}}, 422,
         "body: Input should be a valid dictionary or object"),
        ("post", "/recommend", {"content": b'{"k": NaN}', "headers": {"content-type": "application/json"}}, 422, "k"),
        ("post", "/recommend", {"content": b'{"user_id": "\xff"}', "headers": {"content-type": "application/json"}},
         400, "error parsing the body"),
        ("post", "/recommend", {"content": b"[" * 3000 + b"]" * 3000, "headers": {"content-type": "application/json"}},
         400, "error parsing the body"),  # too deep for json.loads: RecursionError, not a 500
        ("get", "/items/i1/similar", {"params": {"k": 0}}, 422, "k"),
        ("get", "/items/i1/similar", {"params": {"k": "x"}}, 422, "k"),
        ("post", "/events", {"json": {"user_id": "u1", "item_id": "i1"}}, 422, "type"),
        ("post", "/events", {"json": {"user_id": "u1", "item_id": "i1", "type": "Bad Type!"}}, 422, "type"),
        ("post", "/events", {"json": {"user_id": "", "item_id": "i1", "type": "view"}}, 422, "user_id"),
        ("post", "/events", {"json": {"user_id": "u", "item_id": "i1", "type": "view", "timestamp": "yesterday"}},
         422, "timestamp"),
        ("post", "/events", {"json": {"user_id": "u", "item_id": "i1", "type": "view", "timestamp": "1700000000"}},
         422, "timestamp"),
        ("put", "/items/x", {"json": {"features": {"text": [0.0] * 8}}, "headers": AUTH}, 422, "missing ['image']"),
        ("put", "/items/x", {"json": {"features": {"text": [0.0] * 7, "image": [0.0] * 6}}, "headers": AUTH},
         422, "text has 7, expected 8"),
        ("put", "/items/x", {"json": {"features": {"text": [0.0] * 8, "image": [0.0] * 6, "audio": [1.0]}},
                             "headers": AUTH}, 422, "unknown ['audio']"),
        ("put", "/items/x", {"content": b'{"features": {"text": [NaN, 0, 0, 0, 0, 0, 0, 0], "image": [0, 0, 0, 0, '
                                        b'0, 0]}}', "headers": {**AUTH, "content-type": "application/json"}},
         None, ""),
        ("put", "/items/x", {"json": {"features": {"text": ["a"] * 8, "image": [0.0] * 6}}, "headers": AUTH},
         422, "features"),
    ],
)
def test_bad_input_gets_4xx_with_message(embedded_client, method, path, kwargs, status, needle):
    client = embedded_client
    r = getattr(client, method)(path, **kwargs) if method != "delete" else client.delete(path, **kwargs)
    if status is None:
        assert 400 <= r.status_code < 500, r.text
    else:
        assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and needle in detail


def test_chunked_oversized_body_gets_413(embedded_client):
    client = embedded_client

    def gen():
        for _ in range(20):
            yield b" " * 1024

    r = client.post("/recommend", content=gen(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_no_model_gives_503(tmp_path):
    with served(_settings(tmp_path / "empty", tmp_path)) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 503
        r = c.post("/recommend", json={"user_id": "u1"})
        assert r.status_code == 503 and "no model" in r.json()["detail"]


def test_unexpected_error_is_json_500_without_trace(client, monkeypatch):
    from service import recommender

    async def boom(*a, **k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(recommender, "recommend", boom)
    r = client.post("/recommend", json={"user_id": "u1"})
    assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
    assert "secret" not in r.text


def test_put_with_non_finite_tower_output_is_422_and_indexes_nothing(client, monkeypatch):
    model = client.app.state.ctx.store.current
    dim = model.manifest.embedding_dim
    monkeypatch.setattr(model.item_tower, "embed", lambda feats: np.full(dim, np.inf, np.float32))
    r = client.put("/items/overflow", json={"features": item_features(4)}, headers=AUTH)
    assert r.status_code == 422 and "NaN or inf" in r.json()["detail"] and "features" in r.json()["detail"]
    assert client.get("/model").json()["side_index_size"] == 0
    assert client.get("/items/overflow/similar").status_code == 404


def test_bodies_match_the_response_models(client, art):
    from service.schemas import RecommendResponse, SimilarResponse

    user, item = art.user_ids[1], art.item_ids[1]
    bodies = ({"user_id": user}, {"user_id": user, "explain": True, "k": 3}, {"history": [item, "zz"]}, {})
    for body, source in zip(bodies, ("user", "user", "history", "popular"), strict=True):
        r = client.post("/recommend", json=body)
        assert r.headers["content-type"] == "application/json" and r.json()["source"] == source
        RecommendResponse.model_validate_json(r.content, strict=True)
    SimilarResponse.model_validate_json(client.get(f"/items/{item}/similar").content, strict=True)


# ---------------------------------------------------------------------------------------------- batch


def _single(client, body: dict) -> dict:
    r = client.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_batch_answers_each_request_as_recommend_does_with_errors_in_place(client, art):
    """Known users, a history, an unknown user (popular), explain and exclude, and two invalid requests: every
    valid answer is the one /recommend gives alone; each invalid one gets its 422 in its place."""
    users = art.user_ids
    requests = [
        {"user_id": users[20], "k": 7},
        {"history": [art.item_ids[3], art.item_ids[9], "not-an-item"], "k": 5},
        {"user_id": "nobody-knows-me", "k": 4},
        {"k": 0},  # invalid: k >= 1
        {"user_id": users[21], "k": 6, "explain": True, "exclude": [art.item_ids[0]]},
        {"user_id": users[22], "history": ["x"] * 51},  # over MRDIB_MAX_REQUEST_HISTORY (50 here)
        {"user_id": users[23], "k": 3, "bogus": 1},  # unknown field
        {"user_id": users[24], "k": 5, "exclude_seen": False},
    ]
    r = client.post("/recommend/batch", json={"requests": requests})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == art.manifest.model_version and len(body["results"]) == len(requests)
    res = body["results"]
    assert res[3] == {"error": {"status": 422, "detail": "k: Input should be greater than or equal to 1",
                                "errors": ["k: Input should be greater than or equal to 1"]}}
    assert res[5]["error"]["status"] == 422 and "at most 50" in res[5]["error"]["detail"]
    assert res[6]["error"]["status"] == 422 and "bogus" in res[6]["error"]["detail"]
    for i in (0, 1, 2, 4, 7):
        alone = _single(client, requests[i])
        assert "error" not in res[i], res[i]
        assert res[i]["source"] == alone["source"] and res[i]["unknown_items"] == alone["unknown_items"]
        assert [x["item_id"] for x in res[i]["items"]] == [x["item_id"] for x in alone["items"]]
        assert np.allclose([x["score"] for x in res[i]["items"]], [x["score"] for x in alone["items"]], atol=1e-5)
    assert res[2]["source"] == "popular" and res[1]["unknown_items"] == ["not-an-item"]
    assert set(res[4]["items"][0]["explain"]) == set(COMPONENTS)
    hist = rows_of(art, [art.item_ids[3], art.item_ids[9]])  # the tower's answer, as for /recommend
    assert_topk(res[1]["items"], art, user_tower_vector(art, hist), hist, 5)


def test_batch_is_one_tower_run_and_one_index_search(client, art, monkeypatch):
    """Several histories and user vectors: ONE onnxruntime run and ONE FAISS search for the whole batch; the
    vectors of known users are cached afterwards (the next batch is served from the cache)."""
    model = client.app.state.ctx.store.current
    calls = {"tower": 0, "search": 0}

    class CountingSession:  # the real session, its runs counted
        def __init__(self, sess):
            self.sess = sess

        def run(self, *a, **kw):
            calls["tower"] += 1
            return self.sess.run(*a, **kw)

    search = model.ip.loaded.search

    def counting_search(*a, **kw):
        calls["search"] += 1
        return search(*a, **kw)

    monkeypatch.setattr(model.user_tower, "sess", CountingSession(model.user_tower.sess))
    monkeypatch.setattr(model.ip.loaded, "search", counting_search)
    users = art.user_ids[30:40]
    requests = [{"user_id": u, "k": 5} for u in users] + [
        {"history": [art.item_ids[i], art.item_ids[i + 1]], "k": 4} for i in range(0, 12, 2)]
    first = client.post("/recommend/batch", json={"requests": requests}).json()["results"]
    assert calls == {"tower": 1, "search": 1}, calls
    assert [x["cached"] for x in first[:10]] == [False] * 10
    second = client.post("/recommend/batch", json={"requests": requests[:10]}).json()["results"]
    assert [x["cached"] for x in second] == [True] * 10
    assert [x["items"] for x in second] == [x["items"] for x in first[:10]]


def test_batch_limits_and_a_failing_request(client, art, monkeypatch):
    n = client.app.state.ctx.settings.max_batch
    r = client.post("/recommend/batch", json={"requests": [{"k": 1}] * (n + 1)})
    assert r.status_code == 422 and f"at most {n}" in r.json()["detail"]
    assert client.post("/recommend/batch", json={"requests": []}).status_code == 422
    assert client.post("/recommend/batch", json={"requests": [1, "x"]}).status_code == 422  # not objects
    # A request whose computation fails: a 500 in its place, the others answered.
    from service import recommender

    real = recommender.finish
    bad = art.user_ids[41]

    def finish(model, overlay, vector, rows, scores, banned_side, k, explain):
        if k == 9:
            raise RuntimeError("boom")
        return real(model, overlay, vector, rows, scores, banned_side, k, explain)

    monkeypatch.setattr(recommender, "finish", finish)
    res = client.post("/recommend/batch", json={"requests": [{"user_id": bad, "k": 9},
                                                             {"user_id": art.user_ids[42], "k": 3}]}).json()
    assert res["results"][0] == {"error": {"status": 500, "detail": "internal server error"}}
    assert len(res["results"][1]["items"]) == 3
