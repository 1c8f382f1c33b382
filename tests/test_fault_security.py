"""Security and hardening (issue 13) over real HTTP, with the real Redis and a real trained artifact.

One test (at least) per finding of the issue, each checked to fail on the code before the fix:
1. who may write events: MRDIB_EVENTS_TOKEN (or the admin token), open with a warning when unset; a per-user
   rate limit (token bucket in Redis, in-process while Redis is down), 429 with Retry-After;
2. event ids scoped to their user: the same id from two users lands twice; a true retry is a duplicate;
3. huge-but-finite vectors refused by `mrdib artifact verify` (exit 2) and by reload (the old model serves on);
   a tower output that cannot be served answers 503, never 500;
4. no secrets in logs (`mrdib serve --workers 2`, access log on and off);
5. /model without paths or refusal reasons (those need the admin token); /metrics optionally token-gated;
6. request heads over MRDIB_MAX_HEADER_BYTES refused (431 or a closed connection);
7. PUT /items features bounded, and the item tower's output checked like loaded vectors;
8. the Allow header, integral floats as integers, the modalities named in the schema.
`test_done_when_real_serve_two_workers_and_redis` is the issue's "Done when" on a real `mrdib serve --workers 2`.
Each test records its figures for docs/BENCHMARKS.md (tests/_fault_helpers.record).
"""

from __future__ import annotations

import contextlib
import json
import socket
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from mrdib.artifact import schema as S
from mrdib.artifact.bounds import vector_problem
from mrdib.artifact.store import LoadedArtifact, load_artifact, sha256_file
from mrdib.redis_keys import KeyLayout
from service.api import create_app
from service.settings import Settings
from service.towers import ItemTower
from tests._fault_helpers import ServeProcess, record
from tests._service_helpers import ServerThread, corrupt, free_port, item_features, redis_available

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

ADMIN = "admin-" + uuid.uuid4().hex
EVENTS = "events-" + uuid.uuid4().hex
BURST = 5  # events a user may send at once in this module's server; then one every 2 s


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def env(tmp_path_factory, build_artifact, redis_url):
    if not redis_available(redis_url):
        pytest.skip(f"no Redis at {redis_url}")
    root = tmp_path_factory.mktemp("security") / "artifacts"
    version = build_artifact(root)
    prefix = f"mrdib-sec-{uuid.uuid4().hex[:8]}:"
    settings = Settings(artifacts=root, redis_url=redis_url, redis_key_prefix=prefix, stream=prefix + "events",
                        wal_path=root.parent / "wal.jsonl", poll_interval_s=0, redis_check_interval_s=0.2,
                        cpu_threads=2, admin_token=ADMIN, events_token=EVENTS, event_burst=BURST,
                        event_rate_per_s=0.5)
    r = redis.Redis.from_url(redis_url)
    try:
        with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
            yield {"http": http, "redis": r, "stream": prefix + "events", "root": root, "version": version,
                   "art": load_artifact(root / version), "url": srv.url, "publish": build_artifact,
                   "prefix": prefix}
    finally:
        keys = list(r.scan_iter(match=prefix + "*"))
        if keys:
            r.delete(*keys)


def in_stream(env, event_id: str) -> list[dict[str, str]]:
    """The stream entries (decoded fields) carrying `event_id`."""
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in stream_entries(env["redis"], env["prefix"],
                                                                                         env["stream"])
            if f[b"event_id"] == event_id.encode()]


def stream_entries(r, prefix: str, stream: str) -> list:
    """Every entry of the service's event streams (one per user shard, mrdib/redis_keys.py)."""
    return [e for key in KeyLayout(prefix, stream).streams() for e in r.xrange(key)]


def event(art: LoadedArtifact, user: str, n: int = 0, event_id: str | None = None) -> dict:
    body = {"user_id": user, "item_id": art.item_ids[n], "type": "purchase"}
    return body | ({"event_id": event_id} if event_id else {})


# --- 1. who may write events ---------------------------------------------------------------------

def test_events_need_the_events_or_the_admin_token(env):
    http, art = env["http"], env["art"]
    user = "victim-" + uuid.uuid4().hex[:6]
    refused = {}
    for name, headers, want in (("none", {}, 401), ("wrong", bearer("nope"), 403), ("basic", {"Authorization":
                                f"Basic {EVENTS}"}, 401), ("bearer without token", {"Authorization": "Bearer"}, 401)):
        eid = f"refused-{name}-{uuid.uuid4().hex[:6]}"
        r = http.post("/events", json=event(art, user, 1, eid), headers=headers)
        assert r.status_code == want, f"{name}: {r.status_code} {r.text}"
        assert "token" in r.json()["detail"]
        assert not in_stream(env, eid), f"{name}: a refused event reached the stream"
        refused[name] = r.status_code
    assert http.post("/events", json=event(art, user, 1), headers={}).headers.get("www-authenticate") == "Bearer"
    for token in (EVENTS, ADMIN):
        eid = "ok-" + uuid.uuid4().hex
        r = http.post("/events", json=event(art, user, 2, eid), headers=bearer(token))
        assert r.status_code == 202 and r.json()["durable_in"] == "redis", r.text
        assert len(in_stream(env, eid)) == 1
    record("events_token", covers="13.1 events token",
           load="one server, MRDIB_EVENTS_TOKEN and MRDIB_ADMIN_TOKEN set",
           faults="POST /events without, with a wrong, a Basic and an empty token",
           requests=len(refused) + 3, refused=refused, accepted_with="events token, admin token", failures=0)


def test_events_are_open_without_a_token_and_say_so_at_start(tmp_path, build_artifact, capsys):
    root = tmp_path / "artifacts"
    art = load_artifact(root / build_artifact(root))
    settings = Settings(artifacts=root, redis_url=None, wal_path=tmp_path / "wal.jsonl", poll_interval_s=0,
                        cpu_threads=1)
    with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        r = http.post("/events", json=event(art, "local-user", 1))
        assert r.status_code == 202 and r.json()["durable_in"] == "file" and r.json()["duplicate"] is None
    assert '"event": "events_open"' in capsys.readouterr().err
    record("events_open_warned", covers="13.1 open events warned",
           load="one server, no events token",
           faults="POST /events without a token", requests=1, accepted=1, warning="events_open", failures=0)


# --- 2. event ids belong to their user -------------------------------------------------------------

def test_the_same_event_id_from_two_users_lands_twice(env):
    http, art = env["http"], env["art"]
    run = uuid.uuid4().hex[:6]
    alice, mallory, eid = f"alice-{run}", f"mallory-{run}", f"order-{run}"
    first = http.post("/events", json=event(art, alice, 3, eid), headers=bearer(EVENTS))
    second = http.post("/events", json=event(art, mallory, 4, eid), headers=bearer(EVENTS))
    for r in (first, second):
        assert r.status_code == 202, r.text
        assert r.json() == {"event_id": eid, "durable_in": "redis", "duplicate": False}
    entries = in_stream(env, eid)
    assert sorted(e["user_id"] for e in entries) == [alice, mallory]
    # A true retry (same user, same id) is idempotent, and the client is told.
    retry = http.post("/events", json=event(art, alice, 3, eid), headers=bearer(EVENTS))
    assert retry.status_code == 202 and retry.json()["duplicate"] is True
    assert len(in_stream(env, eid)) == 2
    # Each user's own state got its own event.
    hist = {u: env["redis"].lrange(KeyLayout(env["prefix"]).user_key("hist", u), 0, -1) for u in (alice, mallory)}
    assert hist == {alice: [art.item_ids[3].encode()], mallory: [art.item_ids[4].encode()]}
    assert http.post("/recommend", json={"user_id": mallory, "k": 3}).json()["source"] == "history"
    record("event_ids_per_user", covers="13.2 event ids per user",
           load="one server with Redis", faults="one event_id sent by two users, then retried",
           requests=3, stream_entries=len(in_stream(env, eid)), retry_duplicate=True, failures=0)


# --- 1. per-user rate limit ------------------------------------------------------------------------

def test_events_beyond_the_users_rate_get_429_with_retry_after(env):
    import time

    http, art = env["http"], env["art"]
    run = uuid.uuid4().hex[:6]
    user, other = f"flood-{run}", f"calm-{run}"
    codes = [http.post("/events", json=event(art, user, i, f"{run}-{i}"), headers=bearer(EVENTS)).status_code
             for i in range(BURST + 3)]
    assert codes == [202] * BURST + [429] * 3, codes
    r = http.post("/events", json=event(art, user, 9), headers=bearer(EVENTS))
    assert r.status_code == 429 and user in r.json()["detail"]
    assert int(r.headers["retry-after"]) >= 1
    assert sum(1 for _, f in stream_entries(env["redis"], env["prefix"], env["stream"])
               if f[b"user_id"] == user.encode()) == BURST
    # A retry of an event already recorded is answered (duplicate), not refused, and takes no token.
    dup = http.post("/events", json=event(art, user, 0, f"{run}-0"), headers=bearer(EVENTS))
    assert dup.status_code == 202 and dup.json()["duplicate"] is True
    # Other users are not affected; the bucket refills at the configured rate.
    assert http.post("/events", json=event(art, other, 1), headers=bearer(EVENTS)).status_code == 202
    time.sleep(int(r.headers["retry-after"]) + 0.1)
    assert http.post("/events", json=event(art, user, 10), headers=bearer(EVENTS)).status_code == 202
    record("events_rate_limit", covers="13.1 rate limit",
           load=f"one user, burst {BURST}, 0.5 event/s", faults=f"{BURST + 4} events at once",
           requests=BURST + 7, accepted=BURST, refused_429=4, failures=0)


def test_rate_limit_holds_while_redis_is_down(tmp_path, build_artifact):
    root = tmp_path / "artifacts"
    art = load_artifact(root / build_artifact(root))
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: Redis is down from the start
    settings = Settings(artifacts=root, redis_url=dead, wal_path=tmp_path / "wal.jsonl", poll_interval_s=0,
                        cpu_threads=1, event_burst=3, event_rate_per_s=0.5, redis_check_interval_s=5)
    with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        answers = [http.post("/events", json=event(art, "u-down", i)) for i in range(5)]
    assert [a.status_code for a in answers] == [202, 202, 202, 429, 429]
    assert {a.json()["durable_in"] for a in answers[:3]} == {"wal"}
    assert int(answers[3].headers["retry-after"]) == 2  # 0.5 token/s: the next one in 2 s
    assert len((tmp_path / "wal.jsonl").read_text().splitlines()) == 3
    record("events_rate_limit_redis_down", covers="13.1 rate limit, Redis down",
           load="Redis unreachable, burst 3, 0.5 event/s",
           faults="5 events of one user", requests=5, accepted_to_wal=3, refused_429=2, failures=0)


# --- 3. vectors that cannot be served --------------------------------------------------------------

def reseal(version_dir: Path, *names: str) -> None:
    """Record new checksums of `names` in the manifest, as a (hostile or broken) exporter would have."""
    p = version_dir / S.MANIFEST
    m = json.loads(p.read_text(encoding="utf-8"))
    for name in names:
        f = version_dir / name
        m["files"][name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    p.write_text(json.dumps(m), encoding="utf-8")


def make_huge(v: Path, scale: float = 1e20) -> None:
    """Vectors huge but finite, consistent with each other (components still sum, the ip index holds the same
    vectors): every check before this issue passed it, and every score of a known user overflowed float32."""
    import faiss

    users, items, comps = (np.load(v / n) for n in (S.USER_VECTORS, S.ITEM_VECTORS, S.ITEM_COMPONENTS))
    np.save(v / S.USER_VECTORS, (users * scale).astype(np.float32))
    np.save(v / S.ITEM_VECTORS, (items * scale).astype(np.float32))
    np.save(v / S.ITEM_COMPONENTS, (comps * scale).astype(np.float32))
    index = faiss.IndexFlatIP(items.shape[1])
    index.add((items * scale).astype(np.float32))
    faiss.write_index(index, str(v / S.INDEX_IP))
    reseal(v, S.USER_VECTORS, S.ITEM_VECTORS, S.ITEM_COMPONENTS, S.INDEX_IP)


def test_huge_vector_artifact_is_refused_by_verify_and_by_reload(env):
    from typer.testing import CliRunner

    from mrdib.cli import app

    http, root, art = env["http"], env["root"], env["art"]
    before = http.post("/recommend", json={"user_id": art.user_ids[1], "k": 5}).json()
    good = before["model_version"]
    bad = env["publish"](root, seed=1)
    make_huge(root / bad)
    r = CliRunner().invoke(app, ["artifact", "verify", str(root / bad)])
    assert r.exit_code == 2, r.output
    assert "user_vectors.npy" in r.output and "servable bound" in r.output and "Traceback" not in r.output
    reload = http.post("/admin/reload", headers=bearer(ADMIN))
    assert reload.status_code == 409 and reload.json()["status"] == "refused", reload.text
    assert "servable bound" in reload.json()["error"] and reload.json()["model_version"] == good
    after = http.post("/recommend", json={"user_id": art.user_ids[1], "k": 5})
    assert after.status_code == 200  # the old model keeps serving, with the same answer
    assert (after.json()["model_version"], after.json()["items"]) == (good, before["items"])
    # Back to a good version for the other tests of this module.
    env["publish"](root, seed=0)
    assert http.post("/admin/reload", headers=bearer(ADMIN)).json()["status"] == "loaded"
    record("huge_vector_artifact", covers="13.3 huge vectors",
           load="one server serving a good version",
           faults="a version with vectors x1e20 (finite, consistent, checksums resealed) published",
           requests=4, verify_exit_code=2, reload_status=409, old_model_kept=True, failures=0)


def make_towers_overflow(v: Path, scale: float = 1e30) -> None:
    """Towers that pass their dry runs at load (history [row 0]; all-zero features) but overflow on other
    inputs: the user tower's embedding rows of items 100.. and the item tower's feature scaling multiplied by
    `scale`."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    for name, edit in ((S.USER_TOWER, "user"), (S.ITEM_TOWER, "item")):
        model = onnx.load(v / name)
        for init in model.graph.initializer:
            a = numpy_helper.to_array(init).copy()
            if edit == "user" and init.name == "table":  # the item vectors the tower pools
                a[100:-1] *= scale  # the last row is the padding row: left as it is
            elif edit == "item" and init.name.startswith("mean_"):
                a[:] = 0  # zero features stay zero after normalisation: the dry run passes
            elif edit == "item" and init.name.startswith("inv_std_"):
                a *= scale
            else:
                continue
            init.CopyFrom(numpy_helper.from_array(a.astype(np.float32), init.name))
        onnx.save(model, v / name)
    reseal(v, S.USER_TOWER, S.ITEM_TOWER)


def test_tower_outputs_that_cannot_be_served_get_clear_errors(tmp_path, build_artifact):
    root = tmp_path / "artifacts"
    version = build_artifact(root)
    make_towers_overflow(root / version)
    art = load_artifact(root / version)
    settings = Settings(artifacts=root, redis_url=None, wal_path=tmp_path / "wal.jsonl", poll_interval_s=0,
                        cpu_threads=1, admin_token=ADMIN)
    with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        assert http.get("/readyz").json()["model_version"] == version  # loaded: its dry runs pass
        # The user tower on this history overflows: a clear 503, never a 500 or invalid JSON.
        r = http.post("/recommend", json={"history": [art.item_ids[150]], "k": 5})
        assert r.status_code == 503, r.text
        assert "cannot answer this request" in r.json()["detail"] and "user tower" in r.json()["detail"]
        assert 'mrdib_unservable_total 1.0' in http.get("/metrics").text
        # What does not go through the tower still serves.
        assert http.post("/recommend", json={"user_id": art.user_ids[1], "k": 5}).status_code == 200
        # 7: the item tower's output passes the same check as loaded vectors, or the PUT is refused.
        feats = item_features(3)
        r = http.put("/items/overflowing", json={"features": feats}, headers=bearer(ADMIN))
        assert r.status_code == 422 and "cannot be served" in r.json()["detail"], r.text
        assert http.get("/items/overflowing/similar").status_code == 404
        top = http.post("/recommend", json={"user_id": art.user_ids[1], "k": 3}).json()["items"]
        assert "overflowing" not in {i["item_id"] for i in top}
    record("tower_overflow", covers="13.3 last guard, 13.7 tower output",
           load="one server, a version whose towers overflow beyond their dry-run inputs",
           faults="/recommend with a history; PUT /items with ordinary features", requests=6,
           recommend_status=503, put_status=422, failures=0)


def test_similar_items_with_a_non_finite_score_get_a_clear_error(tmp_path, build_artifact):
    """The last guard covers GET /items/{id}/similar too: a cosine index that disagrees with the item vectors
    (checksums resealed: a hostile or broken exporter) makes a score infinite; the answer is a 503 naming the
    model, not a 500 from the JSON encoder."""
    import faiss

    root = tmp_path / "artifacts"
    version = build_artifact(root)
    v = root / version
    art = load_artifact(v)
    unit = art.item_vectors / np.linalg.norm(art.item_vectors, axis=1, keepdims=True)
    bad = unit.copy()
    bad[5] = np.where(unit[1] >= 0, np.inf, -np.inf)  # row 5 . item 1 = +inf
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(bad.astype(np.float32))
    faiss.write_index(index, str(v / S.INDEX_COS))
    reseal(v, S.INDEX_COS)
    settings = Settings(artifacts=root, redis_url=None, wal_path=tmp_path / "wal.jsonl", poll_interval_s=0,
                        cpu_threads=1)
    with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        assert http.get("/readyz").json()["model_version"] == version
        r = http.get(f"/items/{art.item_ids[1]}/similar", params={"k": 5})
        assert r.status_code == 503, r.text
        assert "score is not finite" in r.json()["detail"] and version in r.json()["detail"]
        assert http.post("/recommend", json={"user_id": art.user_ids[1], "k": 5}).status_code == 200
    record("similar_non_finite", covers="13.3 last guard (similar items)",
           load="one server", faults="a cosine index with an infinite row (checksum resealed)", requests=2,
           similar_status=503, failures=0)


# --- 7. feature magnitudes of PUT /items ---------------------------------------------------------

def test_put_item_features_are_bounded(env):
    http, art = env["http"], env["art"]
    statuses = {}
    for value in (1e38, -3e38, 1e6 + 1):
        feats = item_features(4)
        feats["text"][2] = value
        r = http.put("/items/too-big", json={"features": feats}, headers=bearer(ADMIN))
        assert r.status_code == 422, f"{value}: {r.status_code} {r.text}"
        assert "features.text.2" in r.json()["detail"] and "1000000" in r.json()["detail"], r.text
        statuses[str(value)] = r.status_code
    assert http.get("/items/too-big/similar").status_code == 404
    # At the limit: accepted, and the item's scores are ordinary numbers.
    feats = item_features(4)
    feats["text"][2] = 1e6
    r = http.put("/items/big-but-ok", json={"features": feats}, headers=bearer(ADMIN))
    # The feature bound passes; whether the vector bound does is the tower's to say, so ask the same tower.
    m = art.manifest
    tower = ItemTower(art.file(S.ITEM_TOWER), {x.name: x.dim for x in m.modalities}, m.embedding_dim)
    problem = vector_problem(tower.embed({k: np.asarray(v, np.float32) for k, v in feats.items()}))
    if problem is None:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 422 and "item tower" in r.json()["detail"] and problem in r.json()["detail"], r.text
    sims = http.get(f"/items/{art.item_ids[1]}/similar", params={"k": 200}).json()["items"]
    assert all(np.isfinite(s["score"]) and abs(s["score"]) <= 1 + 1e-5 for s in sims)  # with the big item in
    if problem is None:
        assert http.delete("/items/big-but-ok", headers=bearer(ADMIN)).status_code == 200
    record("put_feature_bounds", covers="13.7 feature bounds",
           load="one server", faults="PUT /items with features 1e38, -3e38, 1e6+1",
           requests=5, statuses=statuses, failures=0)


# --- 5. what /model and /metrics show ---------------------------------------------------------------

def test_model_shows_no_paths_and_details_need_the_admin_token(env):
    http, root = env["http"], env["root"]
    bad = env["publish"](root, seed=1)
    corrupt(root, bad)
    r = http.post("/admin/reload", headers=bearer(ADMIN))
    assert r.status_code == 409 and str(root) in r.json()["error"]  # the reason names the file: admin only
    public = http.get("/model")
    assert public.status_code == 200
    assert str(root.anchor + root.parts[1]) not in public.text and bad not in public.text, public.text
    assert set(public.json()) == {"model_version", "created_at", "n_users", "n_items", "side_index_size",
                                  "hidden_items", "metrics",
                                  "components", "item_meta_fields"}  # what the demo page (/ui) needs: no paths
    assert http.get("/admin/model").status_code == 401
    assert http.get("/admin/model", headers=bearer(EVENTS)).status_code == 403  # the events token is not admin
    details = http.get("/admin/model", headers=bearer(ADMIN)).json()
    assert bad in details["refused_versions"] and str(root) in details["refused_versions"][bad]
    env["publish"](root, seed=0)
    assert http.post("/admin/reload", headers=bearer(ADMIN)).json()["status"] == "loaded"
    record("model_route", covers="13.5 /model",
           load="one server", faults="a corrupted version refused, then GET /model",
           requests=5, public_fields=len(public.json()), absolute_paths_in_public=0, failures=0)


def test_metrics_can_require_a_token(tmp_path, build_artifact):
    root = tmp_path / "artifacts"
    build_artifact(root)
    metrics_token = "metrics-" + uuid.uuid4().hex
    settings = Settings(artifacts=root, redis_url=None, wal_path=tmp_path / "wal.jsonl", poll_interval_s=0,
                        cpu_threads=1, admin_token=ADMIN, metrics_token=metrics_token)
    with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers=bearer("nope")).status_code == 403
        for token in (metrics_token, ADMIN):
            r = http.get("/metrics", headers=bearer(token))
            assert r.status_code == 200 and "mrdib_model_info" in r.text
        assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200  # stay public
    record("metrics_token", covers="13.5 /metrics token",
           load="one server, MRDIB_METRICS_TOKEN set",
           faults="GET /metrics without and with a wrong token", requests=6, refused="401, 403", failures=0)


# --- 6. request heads ------------------------------------------------------------------------------

def send_raw(port: int, data: bytes, timeout: float = 10.0) -> int | None:
    """Send `data` on a fresh connection; the status the server answered, or None when it closed (or reset) the
    connection without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)  # the server may refuse before reading it all; its answer may still be there
        out = b""
        try:
            while chunk := s.recv(65536):  # every request here asks the server to close when done
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    first = out.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) >= 2 and first[1].isdigit() else None


def get_with_headers(headers: list[tuple[str, str]]) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return f"GET /healthz HTTP/1.1\r\nHost: x\r\n{lines}Connection: close\r\n\r\n".encode()


def test_oversize_request_heads_are_refused(env):
    port = int(env["url"].rsplit(":", 1)[1])
    cases = {
        "1 MB header": (get_with_headers([("X-Big", "a" * (1 << 20))]), (431, None)),
        "64 MB header": (get_with_headers([("X-Big", "a" * (64 << 20))]), (431, None)),
        "40 KB header": (get_with_headers([("X-Big", "a" * 40_000)]), (431,)),
        "400 headers of 100 bytes": (get_with_headers([(f"X-H{i}", "b" * 100) for i in range(400)]), (431,)),
        "1 MB request target": (f"GET /healthz?{'q' * (1 << 20)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                                .encode(), (431, None)),
        "20 KB header (under the limit)": (get_with_headers([("X-Ok", "a" * 20_000)]), (200,)),
    }
    got = {}
    for name, (data, allowed) in cases.items():
        got[name] = send_raw(port, data)
        assert got[name] in allowed, f"{name}: {got[name]}"
    # Two pipelined requests on one connection are both answered (the head count restarts per request).
    two = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(two)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out.count(b"HTTP/1.1 200") == 2, out[:500]
    assert env["http"].get("/healthz").status_code == 200
    record("request_heads", covers="13.6 header size",
           load="one server, MRDIB_MAX_HEADER_BYTES = 32 KiB", faults=", ".join(cases),
           requests=len(cases) + 3, answers={k: v if v is not None else "closed" for k, v in got.items()},
           failures=0)


def test_heads_under_the_limit_pass_however_the_network_splits_them(env):
    """A head under MRDIB_MAX_HEADER_BYTES arriving in many small reads (a slow link, small TCP segments) is
    answered, and one over it sent the same way is refused: the limit is the head's size, not its read pattern
    (counting the reads and the parsed headers together once refused heads of half the limit)."""
    import time

    port = int(env["url"].rsplit(":", 1)[1])

    def send_in_pieces(data: bytes, piece: int = 2048) -> int | None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for at in range(0, len(data), piece):
                    s.sendall(data[at:at + piece])
                    time.sleep(0.01)  # each piece its own read on the server
            out = b""
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                while chunk := s.recv(65536):
                    out += chunk
        first = out.split(b"\r\n", 1)[0].split()
        return int(first[1]) if len(first) >= 2 and first[1].isdigit() else None

    under = send_in_pieces(get_with_headers([("X-Ok", "a" * 28_000)]))
    split_many = send_in_pieces(get_with_headers([(f"X-H{i}", "b" * 1000) for i in range(28)]))
    over = send_in_pieces(get_with_headers([("X-Big", "a" * 40_000)]))
    assert (under, split_many) == (200, 200) and over in (431, None), (under, split_many, over)
    record("request_heads_split", covers="13.6 header size",
           load="one server, MRDIB_MAX_HEADER_BYTES = 32 KiB",
           faults="heads of 28 KB (one header; 28 headers) and 40 KB sent in 2 KB pieces", requests=3,
           answers={"28 KB": under, "28 x 1 KB": split_many, "40 KB": over}, failures=0)


# --- 8. the schema tells the truth -----------------------------------------------------------------

def test_allow_header_integral_k_and_modalities_in_the_schema(env):
    http, art = env["http"], env["art"]
    r = http.options("/items/some-item")
    assert r.status_code == 204 and r.headers["allow"] == "DELETE, OPTIONS, PUT", r.headers
    r = http.get("/items/some-item")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, OPTIONS, PUT"
    assert http.options("/items/x/similar").headers["allow"] == "GET, OPTIONS"
    # JSON Schema's integer: 553.0 is 553; 2.5, true and "5" are not integers.
    r = http.post("/recommend", json={"user_id": art.user_ids[1], "k": 553.0})
    assert r.status_code == 200 and len(r.json()["items"]) == min(553, art.manifest.n_items - len(
        set(art.seen_items(1).tolist())))
    for k in (2.5, True, "5"):
        assert http.post("/recommend", json={"user_id": art.user_ids[1], "k": k}).status_code == 422, k
    # The features PUT /items needs are named in the schema, from the loaded model.
    schema = http.get("/openapi.json").json()
    features = schema["components"]["schemas"]["ItemIn"]["properties"]["features"]
    dims = {m.name: m.dim for m in art.manifest.modalities}
    assert features["required"] == sorted(dims) and features["additionalProperties"] is False
    assert {m: (p["minItems"], p["maxItems"]) for m, p in features["properties"].items()} == {
        m: (d, d) for m, d in dims.items()}
    assert features["properties"]["text"]["items"]["maximum"] == 1e6
    # So are the display fields `fields` may ask for (a schema-valid name is one the items have).
    known = sorted(http.get("/model").json()["item_meta_fields"])
    assert schema["components"]["schemas"]["RecommendRequest"]["properties"]["fields"]["items"]["enum"] == known
    record("schema_honesty", covers="13.8 Allow, integral k, modalities",
           load="one server",
           faults="OPTIONS and GET on a PUT/DELETE path; k as 553.0, 2.5, true, \"5\"; the schema of features",
           requests=10, failures=0)


# --- 4. no secrets in logs ---------------------------------------------------------------------------

def test_redaction_of_urls_credentials_and_configured_secrets():
    import logging

    from service.logs import REDACTED, configure_logging, redact, register_secrets

    register_secrets("my-configured-secret-value")
    cases = {
        "POST /admin/reload?token=abc123 HTTP/1.1": "POST /admin/reload?token=[REDACTED] HTTP/1.1",
        "GET /healthz?x=1&api_key=k3y&y=2": "GET /healthz?x=1&api_key=[REDACTED]&y=2",
        "GET /a?access_token=t&Authorization=Bearer%20x": "GET /a?access_token=[REDACTED]&Authorization=[REDACTED]",
        "GET /a?password=p;session_id=s": "GET /a?password=[REDACTED];session_id=[REDACTED]",
        "header Authorization: Bearer eyJhbGciOi.J9": f"header Authorization: Bearer {REDACTED}",
        "GET /x?q=my-configured-secret-value": f"GET /x?q={REDACTED}",
        "GET /items/i1/similar?k=5": "GET /items/i1/similar?k=5",
    }
    for raw, want in cases.items():
        assert redact(raw) == want, raw
    # uvicorn's access log record, whatever handler formats it: redacted before any handler sees it.
    configure_logging(access_log=False)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    access = logging.getLogger("uvicorn.access")
    keep, level = Keep(), access.level
    access.addHandler(keep)
    access.setLevel(logging.INFO)
    try:
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST", "/admin/reload?token=abc123", "1.1", 200)
    finally:
        access.removeHandler(keep)
        access.setLevel(level)
        configure_logging(access_log=False)
    assert seen == ['127.0.0.1:5000 - "POST /admin/reload?token=[REDACTED] HTTP/1.1" 200']


def test_access_log_when_enabled_has_no_secrets_with_two_workers(tmp_path, build_artifact):
    root = tmp_path / "artifacts"
    build_artifact(root)
    secret = "S3CRET-" + uuid.uuid4().hex
    env = {"MRDIB_ARTIFACTS": str(root), "MRDIB_WAL_PATH": str(tmp_path / "wal.jsonl"), "MRDIB_CPU_THREADS": "1",
           "MRDIB_POLL_INTERVAL_S": "0", "MRDIB_ACCESS_LOG": "1", "MRDIB_ADMIN_TOKEN": ADMIN}
    with ServeProcess(tmp_path, env) as srv:
        for _ in range(4):  # new connections: both workers answer some
            httpx.get(f"{srv.url}/healthz", params={"api_key": secret, "k": "v"}, headers={"Connection": "close"})
            httpx.post(f"{srv.url}/admin/reload", params={"token": secret}, headers=bearer(ADMIN))
    log = srv.log_text()
    assert secret not in log and ADMIN not in log
    access = [line for line in log.splitlines() if '"logger": "uvicorn.access"' in line]
    assert len(access) >= 8 and all(line.startswith("{") for line in access), log[-2000:]
    assert any("api_key=[REDACTED]&k=v" in line for line in access), access[:3]
    record("access_log_redacted", covers="13.4 secrets in logs",
           load="mrdib serve --workers 2, MRDIB_ACCESS_LOG=1",
           faults="secrets in ?api_key= and ?token=", requests=8, access_lines=len(access), secret_in_log=0,
           failures=0)


def test_done_when_real_serve_two_workers_and_redis(tmp_path, build_artifact, redis_url):
    """The issue's "Done when", on `mrdib serve --workers 2` with real Redis, MRDIB_EVENTS_TOKEN and the admin
    token (from a file) set: /events without a token is 401; the same event_id from two users lands twice in the
    stream; a huge-vector artifact is refused by `mrdib artifact verify` (exit 2, no traceback) and by reload
    (old model still serving); the server log holds no SECRET after POST /admin/reload?token=SECRET; /model holds
    no absolute path; a 1 MB header is refused."""
    import subprocess
    import sys

    if not redis_available(redis_url):
        pytest.skip(f"no Redis at {redis_url}")
    root = tmp_path / "artifacts"
    good = build_artifact(root)
    art = load_artifact(root / good)
    secret = "SECRET-" + uuid.uuid4().hex
    token_file = tmp_path / "admin-token"
    token_file.write_text(secret + "\n")
    prefix = f"mrdib-done-{uuid.uuid4().hex[:8]}:"
    env = {"MRDIB_ARTIFACTS": str(root), "MRDIB_WAL_PATH": str(tmp_path / "wal.jsonl"), "MRDIB_CPU_THREADS": "1",
           "MRDIB_POLL_INTERVAL_S": "0", "REDIS_URL": redis_url, "MRDIB_REDIS_KEY_PREFIX": prefix,
           "MRDIB_STREAM": prefix + "events", "MRDIB_ADMIN_TOKEN_FILE": str(token_file), "MRDIB_EVENTS_TOKEN": EVENTS}
    r = redis.Redis.from_url(redis_url)
    try:
        with ServeProcess(tmp_path, env) as srv, httpx.Client(base_url=srv.url, timeout=20) as http:
            assert http.post("/events", json=event(art, "u1", 1)).status_code == 401
            eid = "same-" + uuid.uuid4().hex
            for user in ("u1", "u2"):
                ok = http.post("/events", json=event(art, user, 2, eid), headers=bearer(EVENTS))
                assert ok.status_code == 202 and ok.json()["duplicate"] is False, ok.text
            assert sorted(f[b"user_id"] for _, f in stream_entries(r, prefix, prefix + "events")
                          if f[b"event_id"] == eid.encode()) == [b"u1", b"u2"]

            before = http.post("/recommend", json={"user_id": art.user_ids[1], "k": 5}).json()
            bad = build_artifact(root, seed=1)
            make_huge(root / bad)
            verify = subprocess.run([sys.executable, "-c", "import sys; from mrdib.cli import app; "
                                     "sys.argv[0] = 'mrdib'; app()", "artifact", "verify", str(root / bad)],
                                    capture_output=True, text=True, timeout=120)
            assert verify.returncode == 2 and "servable bound" in verify.stderr, verify.stdout + verify.stderr
            assert "Traceback" not in verify.stdout + verify.stderr
            reload = http.post("/admin/reload", params={"token": secret}, headers=bearer(secret))
            assert reload.status_code == 409 and reload.json()["model_version"] == good, reload.text
            for _ in range(4):  # whichever worker answers still serves the old model
                after = http.post("/recommend", json={"user_id": art.user_ids[1], "k": 5},
                                  headers={"Connection": "close"})
                assert after.status_code == 200 and after.json()["items"] == before["items"]
            http.get("/healthz", params={"api_key": secret})

            model = http.get("/model")
            assert model.status_code == 200 and str(tmp_path) not in model.text and '"/' not in model.text

            assert send_raw(srv.port, get_with_headers([("X-Big", "a" * (1 << 20))])) in (431, None)
            assert http.get("/healthz").status_code == 200
        log = srv.log_text()
        assert "model_refused" in log  # the log was written, and the refusal is in it
        assert secret not in log and EVENTS not in log
        # The access log is off by default (MRDIB_ACCESS_LOG unset) in every worker, not merely redacted.
        assert '"logger": "uvicorn.access"' not in log and "/admin/reload" not in log, log[-2000:]
    finally:
        keys = list(r.scan_iter(match=prefix + "*"))
        if keys:
            r.delete(*keys)
    record("done_when_serve_two_workers", covers="13 done-when",
           load="mrdib serve --workers 2, real Redis, both tokens set",
           faults="event without token; one event_id from two users; huge-vector version + reload?token=SECRET; "
                  "GET /model; 1 MB header", requests=16, secret_in_log=0, failures=0)
