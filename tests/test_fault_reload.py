"""Hot reload under steady load, and artifacts damaged on disk in several ways.

While 3 threads keep asking for recommendations, the service is moved through good versions and offered
broken ones (flipped bytes, truncated index, garbage manifest, missing file). Checked:
- zero failed requests (every answer 200, no transport error);
- every response names one model version, and its items are exactly that version's exact top-k, scores included
  (so no response mixes two versions: consecutive good versions come from differently trained models, and the
  test checks first that either's answers would be caught under the other);
- every broken version is refused (409 naming the problem) and the version before it keeps serving.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from mrdib.artifact import schema as S
from mrdib.artifact.store import LoadedArtifact, load_artifact
from service.api import create_app
from service.settings import Settings
from tests._fault_helpers import Load, record, wait_for
from tests._service_helpers import ServerThread, corrupt, exact_answer, topk_mismatch, user_tower_vector

pytestmark = pytest.mark.timeout(120)

TOKEN = "fault-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
K = 5
# The three query kinds, as rows of the trained catalogue (the same in every version): two known users, and an
# anonymous history of two items (most recent first).
USER_ROWS = (3, 8)
HISTORY_ROWS = [7, 12]


def queries(art: LoadedArtifact) -> list[dict]:
    return [{"user_id": art.user_ids[USER_ROWS[0]], "k": K},
            {"history": [art.item_ids[r] for r in HISTORY_ROWS], "k": K},
            {"user_id": art.user_ids[USER_ROWS[1]], "k": K}]


@dataclass(frozen=True)
class Expected:
    """What a version must answer to each query: its exact top-K of `vectors[q]`, `banned[q]` excluded."""

    art: LoadedArtifact
    vectors: list[np.ndarray]
    banned: list[np.ndarray]

    def mismatch(self, qi: int, items: list[dict]) -> str | None:
        return topk_mismatch(items, self.art, self.vectors[qi], self.banned[qi], K)

    def answer(self, qi: int) -> list[dict]:
        """The exact answer itself (ids and scores), as the service would send it."""
        return exact_answer(self.art, self.vectors[qi], self.banned[qi], K)


def expected(root: Path, version: str) -> Expected:
    """The user vector and excluded rows of each query under `version` (seen items excluded, as the service does;
    the history query through that version's own ONNX user tower)."""
    art = load_artifact(root / version)
    u, w = USER_ROWS
    return Expected(art, [art.user_vectors[u], user_tower_vector(art, HISTORY_ROWS), art.user_vectors[w]],
                    [art.seen_items(u), np.array(HISTORY_ROWS), art.seen_items(w)])


def tell_apart(a: Expected, b: Expected) -> None:
    """Every query's exact answer under one version is refused under the other: a mixed-up response is caught."""
    for qi in range(3):
        assert a.mismatch(qi, b.answer(qi)) is not None and b.mismatch(qi, a.answer(qi)) is not None, qi


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


def test_hot_reload_under_load_and_damaged_artifacts(tmp_path, build_artifact):
    root = tmp_path / "artifacts"
    good = [build_artifact(root, seed=1)]
    want = {good[0]: expected(root, good[0])}
    query = queries(want[good[0]].art)
    settings = Settings(artifacts=root, redis_url=None, wal_path=tmp_path / "wal.jsonl", admin_token=TOKEN,
                        poll_interval_s=0, cpu_threads=2)
    wrong: list[str] = []
    served: list[str] = []

    def step(c: httpx.Client, tid: int, i: int) -> httpx.Response:
        qi = (tid + i) % len(query)
        r = c.post("/recommend", json=query[qi])
        if r.status_code != 200:
            wrong.append(f"{r.status_code}: {r.text[:200]}")
            return r
        body = r.json()
        v = body["model_version"]
        served.append(v)
        why = want[v].mismatch(qi, body["items"]) if v in want else "unknown version"
        if why is not None:
            wrong.append(f"query {qi} under {v}: {why}")
        return r

    refused: dict[str, str] = {}
    with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        t0 = time.monotonic()
        with Load(srv.url, step, threads=3) as load:
            wait_for(lambda: load.count >= 50, what="load to start")
            for n, breaker in enumerate(BREAKERS):
                # a good version: loaded while requests flow
                v = build_artifact(root, seed=10 + n)  # seeds alternate the two trained models
                want[v] = expected(root, v)
                tell_apart(want[v], want[good[-1]])
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
