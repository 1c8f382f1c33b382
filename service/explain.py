"""`because`: which items of a user's history a recommendation owes most to.

What "contribute most to the score" can honestly mean here. A score is <u, v_i>. The user vector u is either
the artifact's user tower run over the user's history H (anonymous users, recent events, request histories)
or, for a known user without recent events, the vector learned in training. The tower is not additive
(recency-weighted mean of item vectors and log(history length), then a linear map plus an MLP), and a learned
vector is not a function of the history at all, so no exact "item h contributes x" split exists. What the model
does define is a counterfactual: the user vector of the history without h. So the effect of history item h on
item i is

    c_h(i) = <tower(H) - tower(H without h), v_i>

where H is what the tower reads (the first `max_history` rows of request history, recent events, training
history, most recent first, deduplicated) and "H without h" is H with h removed (the older items move up one
place; nothing older comes in, so every c_h compares histories of the same two lengths). For a user served from
the tower over H this is exactly how much item i's score would drop had h not been in the history (for a
request history: ask again without h and the score drops by c_h). For a known user served from the learned
vector it is the drop the tower predicts (the tower is fitted to reproduce the learned vectors from the
training histories; the manifest's `user_tower_relative_recall` says how well): the honest approximation
available without the training data.

`because` lists the up to 3 items with the largest positive c_h(i); an item whose removal would *raise* the
score is not a reason for it. `share` = c_h(i) / sum over every h' in H of max(c_h'(i), 0): the fraction of
everything in the history that pushes this item's score up that h accounts for (the shares of all the pushing
items sum to 1; with a long history each one is small, which is the honest answer). Measured on a model trained
on MovieLens-100k, removing one item at a time, rather than leaving its place empty or adding the next older item
in, gave every recommended item at least one reason: the effects of leaving any item out (a shorter history)
are nearly common to all h, not a reason.

Cost: one tower run over 1 + |H| histories (|H| <= max_history) and a [|H|, d] x [d, k] product per request, and
only when `explain` is asked for.
"""

from __future__ import annotations

import numpy as np

from service.model_store import Overlay, ServingModel

MAX_BECAUSE = 3


def history_effects(model: ServingModel, history: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows of H, c [|H|, k]): the effect of leaving out each item of the history H on the score of each of the
    k item `vectors` ([k, d]); see the module docstring. H = the first max_history rows of `history`."""
    rows = np.asarray(history, dtype=np.int64)[: model.manifest.max_history]
    if len(rows) == 0:
        return rows, np.zeros((0, len(vectors)), np.float32)
    users = model.user_tower.embed_many([rows, *(np.delete(rows, j) for j in range(len(rows)))])
    delta = users[0] - users[1:]  # [n, d]: what each history item adds to the user vector
    return rows, delta @ np.asarray(vectors, dtype=np.float32).T


def because(model: ServingModel, overlay: Overlay, history: np.ndarray, item_ids: list[str],
            top: int = MAX_BECAUSE) -> list[list[tuple[str, float]]]:
    """For each of `item_ids` (catalogue or side items of `overlay`): up to `top` (history item id, share),
    largest effect first. Blocking (runs the user tower): call it from the worker pool."""
    if not item_ids:
        return []
    vectors = np.stack([_vector(model, overlay, i) for i in item_ids])
    rows, effects = history_effects(model, history, vectors)
    if len(rows) == 0:
        return [[] for _ in item_ids]
    ids = model.artifact.item_ids
    total = np.maximum(effects, 0).sum(axis=0)  # everything in the history that pushes each item up
    out = []
    for j in range(len(item_ids)):
        col = effects[:, j]
        best = np.argsort(-col, kind="stable")[:top]
        out.append([(ids[rows[r]], float(col[r] / total[j])) for r in best if col[r] > 0])
    return out


def _vector(model: ServingModel, overlay: Overlay, item_id: str) -> np.ndarray:
    pos = overlay.side_pos.get(item_id)
    if pos is not None:
        return overlay.side_vectors[pos]
    return model.artifact.item_vectors[model.item_row[item_id]]
