"""Hot reload under steady load, and artifacts damaged on disk in several ways.

While 3 threads keep asking for recommendations, the service is moved through good versions and offered
broken ones (flipped bytes, truncated index, garbage manifest, missing file). Checked:
- zero failed requests (every answer 200, no transport error);
- every response names one model version, and its items are exactly that version's exact top-k (so no
  response mixes two versions: each version's vectors come from a different seed);
- every broken version is refused (409 naming the problem) and the version before it keeps serving.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from mrdib.artifact import schema as S
from mrdib.artifact.store import load_artifact
from service.api import create_app
from service.settings import Settings
from tests._fault_helpers import Load, record, wait_for
from tests._service_helpers import ServerThread, build_artifact, corrupt

pytestmark = pytest.mark.timeout(120)

TOKEN = "fault-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
K = 5
QUERIES = [{"user_id": "u3", "k": K}, {"history": ["i7", "i12"], "k": K}, {"user_id": "u8", "k": K}]


def expected(root: Path, version: str) -> list[list[str]]:
    """Exact top-K of each query in QUERIES under `version` (seen items excluded, as the service does)."""
    art = load_artifact(root / version)
    out = []
    for q in QUERIES:
        if "user_id" in q:
            row = int(q["user_id"][1:])
            vec, banned = art.user_vectors[row], list(art.seen_items(row))
        else:
            rows = [int(i[1:]) for i in q["history"]]
            vec, banned = art.item_vectors[rows].mean(axis=0), rows
        scores = art.item_vectors @ vec
        scores[banned] = -np.inf
        out.append([art.item_ids[r] for r in np.argsort(-scores, kind="stable")[:K]])
    return out


def _flip(root: Path, v: str) -> str:
    corrupt(root, v, S.ITEM_VECTORS)
    return "checksum mismatch"


def _truncate_index(root: Path, v: str) -> str:
    p = root / v / S.INDEX_IP
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return S.INDEX_IP


def _garbage_manifest(root: Path, v: str) -> str:
    (root / v / S.MANIFEST).write_text('{"schema_version": 1, "model_version": ')
    return S.MANIFEST


def _missing_file(root: Path, v: str) -> str:
    (root / v / S.USER_TOWER).unlink()
    return S.USER_TOWER


BREAKERS = [_flip, _truncate_index, _garbage_manifest, _missing_file]


def test_hot_reload_under_load_and_damaged_artifacts(tmp_path):
    root = tmp_path / "artifacts"
    good = [build_artifact(root, seed=1)]
    want = {good[0]: expected(root, good[0])}
    settings = Settings(artifacts=root, redis_url=None, wal_path=tmp_path / "wal.jsonl", admin_token=TOKEN,
                        poll_interval_s=0, cpu_threads=2)
    wrong: list[str] = []
    served: list[str] = []

    def step(c: httpx.Client, tid: int, i: int) -> httpx.Response:
        qi = (tid + i) % len(QUERIES)
        r = c.post("/recommend", json=QUERIES[qi])
        if r.status_code != 200:
            wrong.append(f"{r.status_code}: {r.text[:200]}")
            return r
        body = r.json()
        v = body["model_version"]
        served.append(v)
        items = [it["item_id"] for it in body["items"]]
        if v not in want or items != want[v][qi]:
            wrong.append(f"query {qi} under {v}: got {items}, expected {want.get(v, [None] * 3)[qi]}")
        return r

    refused: dict[str, str] = {}
    with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        t0 = time.monotonic()
        with Load(srv.url, step, threads=3) as load:
            wait_for(lambda: load.count >= 50, what="load to start")
            for n, breaker in enumerate(BREAKERS):
                # a good version: loaded while requests flow
                v = build_artifact(root, seed=10 + n)
                want[v] = expected(root, v)
                r = http.post("/admin/reload", headers=AUTH)
                assert r.status_code == 200 and r.json()["model_version"] == v, r.text
                good.append(v)
                seen_before = load.count
                wait_for(lambda s=seen_before: load.count >= s + 30, what="requests on the new version")
                # a broken one: refused, the good one keeps serving
                bad = build_artifact(root, seed=100 + n)
                needle = breaker(root, bad)
                r = http.post("/admin/reload", headers=AUTH)
                assert r.status_code == 409, r.text
                body = r.json()
                assert body["status"] == "refused" and body["candidate"] == bad and body["model_version"] == v
                assert needle in body["error"], body["error"]
                refused[breaker.__name__.strip("_")] = body["error"][:120]
                seen_before = load.count
                wait_for(lambda s=seen_before: load.count >= s + 30, what="requests after the refusal")
                assert http.get("/model").json()["model_version"] == v
        duration = time.monotonic() - t0

    assert not load.errors, load.errors[:5]
    assert not wrong, wrong[:5]
    assert load.server_errors() == 0 and set(load.statuses) == {200}
    assert set(served) <= set(good) and len(set(served)) == len(good)  # every good version really served
    record("hot_reload_under_load",
           load=f"3 threads of /recommend (3 query kinds), {duration:.1f} s",
           faults=f"{len(good) - 1} hot swaps + {len(refused)} damaged versions offered: {sorted(refused)}",
           requests=load.count, versions_served=len(set(served)),
           responses_checked_against_exact_topk=len(served), failures=0)
