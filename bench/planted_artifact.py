"""A hand-made artifact with planted clusters, for the serving benchmark only (not a trained model).

Why it exists: `bench/serve.py` measures the service's throughput and latency at ml-100k's shape (1,682 items,
943 users, d=64) on machines where nobody trained anything; building this takes well under a second and needs
neither torch nor a dataset. Nothing in it comes from the train + export pipeline: the ONNX towers are written
by hand (the user tower is the masked mean of the history's item vectors, the item tower a linear map), so it
must never stand in for a real artifact in the tests -- those train and export one (tests/_service_helpers.py).
The benchmark says in its report which kind of artifact it measured.

Planted structure: items fall into `n_clusters` clusters; an item vector is its cluster centre plus small
noise; user u likes cluster u % n_clusters, has that cluster's centre as its vector and its training history
is `history_len` items of that cluster. Item ids are "i<row>", user ids "u<row>"; item "i0" is the most popular.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mrdib.artifact import schema as S
from mrdib.artifact.store import publish, staging_dir

MODALITIES = {"text": 8, "image": 6}
COMPONENTS = ["collaborative", "shared", "unique:text", "unique:image", "synergy"]


def _user_tower(item_vectors: np.ndarray) -> onnx.ModelProto:
    """history int64 [B, L] (pad -1) -> user_vector = masked mean of the history's item vectors."""
    E = numpy_helper.from_array(item_vectors.astype(np.float32), "E")
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    ax1 = numpy_helper.from_array(np.array([1], np.int64), "ax1")
    ax2 = numpy_helper.from_array(np.array([2], np.int64), "ax2")
    nodes = [
        helper.make_node("GreaterOrEqual", ["history", "zero"], ["mask"]),
        helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Max", ["history", "zero"], ["idx"]),
        helper.make_node("Gather", ["E", "idx"], ["emb"], axis=0),
        helper.make_node("Unsqueeze", ["maskf", "ax2"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["wemb"]),
        helper.make_node("ReduceSum", ["wemb", "ax1"], ["s"], keepdims=0),
        helper.make_node("ReduceSum", ["maskf", "ax1"], ["cnt0"], keepdims=1),
        helper.make_node("Max", ["cnt0", "one"], ["cnt"]),
        helper.make_node("Div", ["s", "cnt"], ["user_vector"]),
    ]
    d = item_vectors.shape[1]
    graph = helper.make_graph(
        nodes, "user_tower",
        [helper.make_tensor_value_info("history", TensorProto.INT64, ["B", "L"])],
        [helper.make_tensor_value_info("user_vector", TensorProto.FLOAT, ["B", d])],
        [E, zero, one, ax1, ax2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _item_tower(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """one float32 [B, d_m] input per modality -> item_vector = sum_m x_m @ W_m."""
    nodes, inits, inputs = [], [], []
    for m, w in weights.items():
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"W_{m}"))
        inputs.append(helper.make_tensor_value_info(m, TensorProto.FLOAT, ["B", w.shape[0]]))
        nodes.append(helper.make_node("MatMul", [m, f"W_{m}"], [f"p_{m}"]))
    nodes.append(helper.make_node("Sum", [f"p_{m}" for m in weights], ["item_vector"]))
    d = next(iter(weights.values())).shape[1]
    graph = helper.make_graph(nodes, "item_tower", inputs,
                              [helper.make_tensor_value_info("item_vector", TensorProto.FLOAT, ["B", d])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def build_planted_artifact(root: Path, *, seed: int = 0, n_items: int = 200, n_users: int = 40, dim: int = 16,
                   n_clusters: int = 5, history_len: int = 8, max_history: int = 20) -> str:
    """Create and publish one planted (hand-made, untrained) artifact under `root`; returns its version id."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)).astype(np.float32) * 2.0
    cluster = np.arange(n_items) % n_clusters
    item_vectors = (centres[cluster] + 0.3 * rng.normal(size=(n_items, dim))).astype(np.float32)
    feats = {m: rng.normal(size=(n_items, dm)).astype(np.float32) for m, dm in MODALITIES.items()}
    weights = {m: (0.3 * rng.normal(size=(dm, dim))).astype(np.float32) for m, dm in MODALITIES.items()}
    parts = {m: feats[m] @ weights[m] for m in MODALITIES}
    synergy = (0.05 * rng.normal(size=(n_items, dim))).astype(np.float32)
    shared = 0.3 * (parts["text"] + parts["image"])
    comps = [None, shared, 0.7 * parts["text"], 0.7 * parts["image"], synergy]
    comps[0] = item_vectors - sum(comps[1:])
    item_components = np.stack(comps).astype(np.float32)

    user_cluster = np.arange(n_users) % n_clusters
    user_vectors = centres[user_cluster].astype(np.float32)
    indptr, indices = [0], []
    for u in range(n_users):
        pool = np.flatnonzero(cluster == user_cluster[u])
        indices.extend(sorted(rng.choice(pool, size=min(history_len, len(pool)), replace=False).tolist()))
        indptr.append(len(indices))
    popularity = rng.integers(1, 50, size=n_items).astype(np.int64)
    popularity[0] = 1000

    st = staging_dir(root)
    np.save(st / S.ITEM_VECTORS, item_vectors)
    np.save(st / S.USER_VECTORS, user_vectors)
    np.save(st / S.ITEM_COMPONENTS, item_components)
    np.save(st / S.ITEM_POPULARITY, popularity)
    (st / S.ITEM_IDS).write_text(json.dumps([f"i{r}" for r in range(n_items)]))
    (st / S.USER_IDS).write_text(json.dumps([f"u{r}" for r in range(n_users)]))
    np.savez(st / S.TRAIN_CSR, indptr=np.array(indptr, np.int64), indices=np.array(indices, np.int64))
    onnx.save(_user_tower(item_vectors), str(st / S.USER_TOWER))
    onnx.save(_item_tower(weights), str(st / S.ITEM_TOWER))
    ip = faiss.IndexFlatIP(dim)
    ip.add(item_vectors)
    faiss.write_index(ip, str(st / S.INDEX_IP))
    cos = faiss.IndexFlatIP(dim)
    cos.add(item_vectors / np.linalg.norm(item_vectors, axis=1, keepdims=True))
    faiss.write_index(cos, str(st / S.INDEX_COS))
    fields = {
        "created_at": datetime.now(UTC),
        "backbone": "planted-mean-tower",
        "mrdib": {"planted": True},
        "modalities": [{"name": m, "dim": dm} for m, dm in MODALITIES.items()],
        "embedding_dim": dim,
        "n_users": n_users,
        "n_items": n_items,
        "n_train_interactions": len(indices),
        "max_history": max_history,
        "components": COMPONENTS,
        "data_fingerprint": f"planted-seed-{seed}",
        "indexes": {"ip": {"file": S.INDEX_IP, "factory": "Flat", "metric": "ip"},
                    "cosine": {"file": S.INDEX_COS, "factory": "Flat", "metric": "cosine"}},
    }
    return publish(st, fields, root).model_version
