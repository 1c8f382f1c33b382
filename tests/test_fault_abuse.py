"""Abusive and malformed input over real HTTP: the right 4xx, never a 5xx, and the service keeps serving.

Extends tests/test_service_api.py (which covers the basic 4xx table: k bounds, unknown fields, malformed JSON,
415, 413, admin auth basics) with what a hostile or broken client sends: protocol-level garbage on a raw
socket (invalid / lying Content-Length, a body cut short), deeply nested JSON, invalid UTF-8, numbers out of
every range, huge k and histories, unknown ids everywhere, admin tokens of every wrong shape, and a flood of
all of it mixed with normal traffic, after which normal requests must still be answered correctly.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter

import httpx
import pytest

from mrdib.artifact.store import LoadedArtifact, load_artifact
from service.api import create_app
from service.settings import Settings
from tests._fault_helpers import record
from tests._service_helpers import ServerThread, assert_topk, item_features

pytestmark = pytest.mark.timeout(90)

TOKEN = "abuse-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def art(tmp_path_factory, build_artifact) -> LoadedArtifact:
    """The trained artifact the server below serves (its ids and training histories)."""
    root = tmp_path_factory.mktemp("abuse") / "artifacts"
    return load_artifact(root / build_artifact(root))


@pytest.fixture(scope="module")
def server(art, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("abuse-server")
    root = art.path.parent
    settings = Settings(artifacts=root, redis_url=None, wal_path=tmp / "wal.jsonl", admin_token=TOKEN,
                        poll_interval_s=0, cpu_threads=2, max_body_bytes=64 * 1024)
    with ServerThread(create_app(settings)) as srv:
        yield srv


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def raw(server, data: bytes, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes on a fresh connection; return whatever the server answers before closing or timing out."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=read_timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    return out


def status_of(response: bytes) -> int | None:
    line = response.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[1].isdigit() else None


def still_serving(http: httpx.Client, art: LoadedArtifact) -> None:
    r = http.post("/recommend", json={"user_id": art.user_ids[1], "k": 5})
    assert r.status_code == 200 and len(r.json()["items"]) == 5
    assert http.get("/readyz").json()["status"] == "ready"


@pytest.mark.parametrize(("name", "data", "want"), [
    ("non-numeric Content-Length",
     b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n{}", 400),
    ("negative Content-Length",
     b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: -5\r\n\r\n{}", 400),
    ("declared body over the limit (nothing sent)",
     b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999\r\n\r\n",
     413),
    ("not HTTP at all", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, 400),
    ("header line without colon", b"GET /healthz HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n", 400),
])
def test_protocol_garbage_gets_4xx_or_close(server, http, art, name, data, want):
    answer = raw(server, data)
    got = status_of(answer)
    assert got is None or 400 <= got < 500, f"{name}: {answer[:200]!r}"
    if got is not None:
        assert got == want, f"{name}: {answer[:300]!r}"
    still_serving(http, art)


def test_body_cut_short_does_not_hang_or_500(server, http, art):
    # Declares 100 bytes, sends 10, closes: the request must be dropped without a 5xx and without a stuck worker.
    data = (b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'{"k": 3, "')
    answer = raw(server, data, read_timeout=3)
    assert status_of(answer) in (None, 400), answer[:200]
    still_serving(http, art)


@pytest.mark.parametrize(("name", "body", "want", "needle"), [
    ("deeply nested arrays", b"[" * 20000 + b"]" * 20000, 400, ""),
    ("deeply nested history", b'{"history": ' + b"[" * 20000 + b"]" * 20000 + b"}", 400, ""),
    ("integer with 5,000 digits", b'{"k": 1' + b"0" * 5000 + b"}", 400, ""),
    ("k far beyond the limit", b'{"k": 1000000000000000000000}', 422, "k"),
    ("k negative", b'{"k": -1}', 422, "k"),
    ("k NaN", b'{"k": NaN}', 422, "k"),
    ("k fractional", b'{"k": 2.5}', 422, "k"),
    ("invalid UTF-8", b'{"user_id": "\xff\xfe\xfd"}', 400, ""),
    ("lone surrogate", b'{"user_id": "\\ud800"}', 422, "user_id"),
    ("user_id of 257 characters", b'{"user_id": "' + b"u" * 257 + b'"}', 422, "user_id"),
    ("history of 1001 ids", b'{"history": [' + b",".join([b'"i1"'] * 1001) + b"]}", 422, "history"),
    ("history not a list", b'{"history": "i1"}', 422, "history"),
    ("exclude of objects", b'{"exclude": [{"id": 1}]}', 422, "exclude"),
    ("top-level string", b'"recommend me"', 422, ""),
    ("null body", b"null", 422, ""),
    ("only whitespace", b"   ", 400, "malformed JSON"),
    ("trailing garbage", b'{"k": 3} {"k": 4}', 400, "malformed JSON"),
])
def test_malformed_recommend_bodies(http, art, name, body, want, needle):
    r = http.post("/recommend", content=body, headers=JSON)
    assert r.status_code == want, f"{name}: {r.status_code} {r.text[:300]}"
    assert needle in r.json()["detail"]
    still_serving(http, art)


def test_extreme_but_valid_requests(http, art):
    n, u1, i1 = art.manifest.n_items, art.user_ids[1], art.item_ids[1]
    # k at its maximum returns the whole catalogue minus what the user saw, sorted.
    body = http.post("/recommend", json={"user_id": u1, "k": 1000}).json()
    scores = [i["score"] for i in body["items"]]
    assert len(scores) == n - len(set(art.seen_items(1).tolist())) and scores == sorted(scores, reverse=True)
    # 1,000 unknown history ids: all listed, popularity fallback.
    hist = [f"nope-{i}" for i in range(1000)]
    body = http.post("/recommend", json={"history": hist, "k": 3}).json()
    assert body["source"] == "popular" and body["unknown_items"] == hist
    # 1,000 known ids (repeats): accepted, the tower sees its max_history.
    body = http.post("/recommend", json={"history": [art.item_ids[i % n] for i in range(1000)], "k": 3}).json()
    assert body["source"] == "history" and len(body["items"]) <= 3
    # Excluding the whole catalogue: an empty list, not an error.
    body = http.post("/recommend", json={"user_id": art.user_ids[2], "exclude": art.item_ids}).json()
    assert body["items"] == []
    # Unknown user, no history: popularity; unknown ids in exclude are ignored.
    body = http.post("/recommend", json={"user_id": "who?", "exclude": ["x", "y"], "k": 2}).json()
    assert body["source"] == "popular" and len(body["items"]) == 2
    # Unicode and control characters in ids are just ids.
    assert http.post("/recommend", json={"user_id": "ü\u0000\u202e", "k": 1}).status_code == 200
    assert http.get("/items/%F0%9F%92%A5/similar").status_code == 404
    assert http.get("/items/" + "x" * 257 + "/similar").status_code == 422
    assert http.get(f"/items/{i1}/similar", params={"k": 10**30}).status_code == 422
    r = http.post("/events", json={"user_id": u1, "item_id": i1, "type": "view", "timestamp": 1700000000})
    assert r.status_code == 422 and "ISO 8601" in r.json()["detail"]
    r = http.post("/events", json={"user_id": u1, "item_id": i1, "type": "view", "event_id": "e" * 65})
    assert r.status_code == 422 and "event_id" in r.json()["detail"]
    still_serving(http, art)


@pytest.mark.parametrize(("headers", "want"), [
    ({}, 401),
    ({"Authorization": "Bearer"}, 401),
    ({"Authorization": "Bearer  wrong"}, 403),
    ({"Authorization": f"Basic {TOKEN}"}, 401),
    ({"Authorization": TOKEN}, 401),
    ({"Authorization": "Bearer wrong"}, 403),
    ({"Authorization": f"Bearer {TOKEN}x"}, 403),
    ({"Authorization": f"Bearer {TOKEN[:-1]}"}, 403),
    ({"Authorization": "Bearer " + "t" * 6000}, 403),
    ({"Authorization": f"Bearer {TOKEN.upper()}"}, 403),
])
def test_admin_routes_refuse_bad_tokens(http, art, headers, want):
    for method, path, kw in (("put", "/items/evil", {"json": {"features": item_features(0)}}),
                             ("delete", f"/items/{art.item_ids[1]}", {}), ("post", "/admin/reload", {})):
        r = http.request(method.upper(), path, headers=headers, **kw)
        assert r.status_code == want, f"{method} {path} with {str(headers)[:40]}: {r.status_code} {r.text[:200]}"
        assert "detail" in r.json()
    # Nothing was changed by the refused calls.
    assert http.get("/items/evil/similar").status_code == 404
    assert http.get(f"/items/{art.item_ids[1]}/similar").status_code == 200


def test_put_rejects_values_beyond_the_feature_limit(http):
    feats = item_features(1)
    feats["text"][0] = 1e300
    r = http.put("/items/huge", json={"features": feats}, headers=AUTH)
    assert r.status_code == 422 and "less than or equal to 1000000" in r.json()["detail"]
    assert http.get("/items/huge/similar").status_code == 404


def test_flood_of_bad_requests_mixed_with_good_ones(server, http, art):
    """4 threads of abuse + 2 of normal traffic: every normal request answered 200 and correct, no 5xx at all."""
    bad_bodies = [b"[" * 5000, b'{"k": "x"}', b'{"history": 5}', b"\xff" * 100, b'{"user_id": ""}', b"{}" * 1000,
                  b'{"k": 1001}', b"null"]
    statuses: Counter[int] = Counter()
    good_wrong: list[str] = []
    u3 = art.user_ids[3]
    expected = http.post("/recommend", json={"user_id": u3, "k": 5}).json()["items"]
    assert_topk(expected, art, art.user_vectors[3], art.seen_items(3), 5)
    lock = threading.Lock()

    def abuse(tid: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            for i in range(60):
                body = bad_bodies[(tid + i) % len(bad_bodies)]
                ctype = "application/json" if i % 5 else "text/plain"
                r = c.post("/recommend", content=body, headers={"content-type": ctype})
                with lock:
                    statuses[r.status_code] += 1

    def good() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            for _ in range(60):
                r = c.post("/recommend", json={"user_id": u3, "k": 5})
                with lock:
                    statuses[r.status_code] += 1
                if r.status_code != 200 or r.json()["items"] != expected:
                    good_wrong.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=abuse, args=(t,)) for t in range(4)] + [threading.Thread(target=good)
                                                                               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not good_wrong, good_wrong[:3]
    assert not any(s >= 500 for s in statuses), statuses
    assert statuses[200] == 120 and sum(statuses.values()) == 360
    still_serving(http, art)
    record("abuse_flood", load="4 threads of malformed bodies + 2 threads of normal /recommend",
           faults=f"{sum(n for s, n in statuses.items() if s != 200)} malformed requests "
                  f"({', '.join(f'{s}: {n}' for s, n in sorted(statuses.items()) if s != 200)})",
           requests=sum(statuses.values()), normal_requests_correct=120, failures=0)
