"""`explain`: component shares, `because` (the history items behind a score, service/explain.py), and the
popularity fallback's scale and reason; over real HTTP against the session's trained artifact.

`because` is checked two ways: against the documented definition computed here with the artifact's own ONNX
user tower (c_h = <tower(H) - tower(H without h), v_i>, share = c_h / sum max(c, 0)), and, for a history-served user,
through the API alone: leaving h out of the request history lowers the item's score by exactly c_h."""

from __future__ import annotations

import numpy as np
import pytest

from mrdib.artifact import schema as S
from mrdib.artifact.store import LoadedArtifact, load_artifact
from tests._service_helpers import item_features
from tests.test_service_api import AUTH, _settings, served


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, build_artifact):
    root = tmp_path_factory.mktemp("artifacts-explain")
    return root, build_artifact(root)


@pytest.fixture(scope="module")
def art(artifact) -> LoadedArtifact:
    root, v = artifact
    return load_artifact(root / v)


@pytest.fixture()
def client(artifact, tmp_path):
    with served(_settings(artifact[0], tmp_path)) as c:
        yield c


class Tower:
    """The artifact's ONNX user tower run directly (one session), as the reference."""

    def __init__(self, art: LoadedArtifact):
        import onnxruntime as ort

        self.sess = ort.InferenceSession(str(art.file(S.USER_TOWER)), providers=["CPUExecutionProvider"])
        self.cap = art.manifest.max_history

    def __call__(self, rows) -> np.ndarray:
        rows = list(rows)[: self.cap]
        hist = np.asarray(rows or [-1], dtype=np.int64)[None, :]
        return self.sess.run(None, {"history": hist})[0][0]


def reference_because(art: LoadedArtifact, history: list[int], vector: np.ndarray) -> list[tuple[str, float]]:
    """The documented definition (service/explain.py), computed independently."""
    tower = Tower(art)
    rows = history[: art.manifest.max_history]
    base = tower(rows)
    effects = np.array([(base - tower(rows[:j] + rows[j + 1:])) @ vector for j in range(len(rows))])
    total = np.maximum(effects, 0).sum()
    best = np.argsort(-effects, kind="stable")[:3]
    return [(art.item_ids[rows[j]], float(effects[j] / total)) for j in best if effects[j] > 0]


def _assert_because(got: list[dict], want: list[tuple[str, float]]) -> None:
    assert [b["item_id"] for b in got] == [i for i, _ in want]
    assert np.allclose([b["share"] for b in got], [s for _, s in want], atol=1e-4)


def test_known_user_because_follows_the_definition(client, art):
    u = 5
    body = client.post("/recommend", json={"user_id": art.user_ids[u], "k": 6, "explain": True}).json()
    assert body["source"] == "user"
    history = art.seen_items(u).tolist()  # training history, most recent first
    some = False
    for it in body["items"]:
        assert list(it["explain"]) == art.manifest.components  # the component shares stay
        b = it["because"]
        assert 0 <= len(b) <= 3 and all(x["item_id"] in {art.item_ids[r] for r in history} for x in b)
        shares = [x["share"] for x in b]
        assert all(0 < s <= 1 for s in shares) and shares == sorted(shares, reverse=True) and sum(shares) <= 1 + 1e-5
        _assert_because(b, reference_because(art, history, art.item_vectors[art.item_ids.index(it["item_id"])]))
        some = some or bool(b)
    assert some
    plain = client.post("/recommend", json={"user_id": art.user_ids[u], "k": 6}).json()
    assert all("because" not in it and "explain" not in it for it in plain["items"])


def test_history_because_is_the_score_drop_without_the_item(client, art):
    """Through the API alone: a share is proportional to how much the score falls when that history item is
    left out of the request (c_h = score(H) - score(H without h), share = c_h / sum max(c, 0))."""
    history = [art.item_ids[r] for r in art.seen_items(7).tolist()[:6]]
    body = client.post("/recommend", json={"history": history, "k": 5, "explain": True}).json()
    assert body["source"] == "history"

    def score_without(dropped: str, item: str) -> float:
        rest = [h for h in history if h != dropped]
        items = client.post("/recommend", json={"history": rest, "k": art.manifest.n_items,
                                                "exclude_seen": False}).json()["items"]
        return next(x["score"] for x in items if x["item_id"] == item)

    checked = 0
    for it in body["items"]:
        b = it["because"]
        assert all(x["item_id"] in history for x in b)
        drops = [it["score"] - score_without(x["item_id"], it["item_id"]) for x in b]
        assert all(d > 0 for d in drops)
        if len(b) >= 2:  # the ratio of two shares is the ratio of their score drops (the common total cancels)
            assert drops[0] / drops[1] == pytest.approx(b[0]["share"] / b[1]["share"], rel=1e-3)
            checked += 1
    assert checked


def test_recent_events_are_part_of_the_history(client, art):
    u = 9
    train = art.seen_items(u).tolist()
    vectors = art.item_vectors @ art.user_vectors[u]
    clicked = int(np.argsort(-vectors)[len(train) + 5])  # liked, not seen
    if clicked in train:
        clicked = next(r for r in np.argsort(-vectors).tolist() if r not in train)
    assert client.post("/events", json={"user_id": art.user_ids[u], "item_id": art.item_ids[clicked],
                                        "type": "click"}).status_code == 202
    body = client.post("/recommend", json={"user_id": art.user_ids[u], "k": 5, "explain": True}).json()
    history = [clicked, *train]
    for it in body["items"]:
        _assert_because(it["because"], reference_because(art, history, art.item_vectors[art.item_ids.index(
            it["item_id"])]))


def test_popularity_fallback_scale_and_reason(client, art):
    body = client.post("/recommend", json={"k": 4, "explain": True}).json()
    assert body["source"] == "popular"
    total = int(art.item_popularity.sum())
    assert total == art.manifest.n_train_interactions
    for it in body["items"]:
        count = int(art.item_popularity[art.item_ids.index(it["item_id"])])
        assert it["score"] == pytest.approx(count / total) and 0 < it["score"] <= 1
        assert it["explain"] == {"popularity": 1.0} and "because" not in it
    assert [it["score"] for it in body["items"]] == sorted((it["score"] for it in body["items"]), reverse=True)
    plain = client.post("/recommend", json={"k": 4}).json()
    assert [it["score"] for it in plain["items"]] == [it["score"] for it in body["items"]]
    assert all("explain" not in it for it in plain["items"])


def test_explain_with_fields_names_the_because_items(client, art):
    fields = art.manifest.item_meta_fields
    body = client.post("/recommend", json={"user_id": art.user_ids[3], "k": 5, "explain": True,
                                           "fields": fields}).json()
    for it in body["items"]:
        for b in it["because"]:
            assert b["meta"] == {k: v for k, v in art.item_meta[art.item_ids.index(b["item_id"])].items()
                                 if k in fields}


def test_side_items_get_because_but_no_components(client, art):
    r = client.put("/items/sku-x", json={"features": item_features(11)}, headers=AUTH)
    assert r.status_code == 200
    body = client.post("/recommend", json={"user_id": art.user_ids[1], "k": art.manifest.n_items + 1,
                                           "explain": True}).json()
    side = next(it for it in body["items"] if it["item_id"] == "sku-x")
    assert "explain" not in side and isinstance(side["because"], list)
    catalogue = next(it for it in body["items"] if it["item_id"] != "sku-x")
    assert list(catalogue["explain"]) == art.manifest.components
