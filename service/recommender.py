"""Scoring: which user vector, which items to exclude, top-k, and the MRdIB explanation.

Decision of the user vector (first match wins):

1. the request carries a `history` with known items -> user tower over
   request history + recent events + training history (most recent first)      source "history"
2. `user_id` with a cached vector of this version                                source "user", cached
3. `user_id` with recent events -> user tower over recent events + training history, cached
                                                                                 source "user" (known) / "history"
4. `user_id` known to the artifact -> its trained user vector, cached            source "user"
5. otherwise: most popular items                                                 source "popular"

score(u, i) = <u, item_vector(i)> = sum_c <u, item_components[c, i]>, so with `explain` each item
carries score share per component (shares sum to 1; a share can be negative or above 1 when
components pull in opposite directions) and `because`, the history items it owes most to (service/explain.py
defines it). The popularity fallback scores an item by its share of all training interactions (in [0, 1]),
and its explanation is `{"popularity": 1.0}`.

Where the blocking part (`rank`) runs: on the event loop when it is small, in the service's
bounded thread pool otherwise. A hop to the pool costs two thread switches and a future (tens of
microseconds of CPU, plus the wait for a free thread under load) -- more than the whole top-k of a
small catalogue. So `rank` runs inline when no tower has to run (the user vector is known) and the
catalogue has at most `MRDIB_INLINE_SEARCH_MAX_ITEMS` items (default 4096: a faiss Flat top-k over
1,682 x 64 takes ~30 us, over 10,000 x 64 ~250 us on the benchmark machine, docs/BENCHMARKS.md);
the user tower and searches over bigger catalogues keep the pool, so one slow search never stalls
every other request of the worker.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from mrdib.artifact.bounds import vector_problem
from service import explain
from service.cache import UserState, UserStateStore
from service.metrics import Metrics
from service.model_store import Overlay, ServingModel


class UnservableOutput(RuntimeError):
    """The served model produced a vector or score that cannot be sent (non-finite, or beyond the bound every
    loaded vector passes). Loading refuses such artifacts; this is the last guard for what only shows per request
    (the user tower on one particular history): the request gets a clear error, never a 500 or invalid JSON."""

    def __init__(self, version: str, what: str):
        super().__init__(f"model {version} cannot answer this request: {what}. The model is faulty; the "
                         "operator should publish another version (logged as unservable_output)")
        self.version = version


def _check_vector(model: ServingModel, vector: np.ndarray) -> None:
    problem = vector_problem(vector)
    if problem:
        raise UnservableOutput(model.version, f"the user tower produced a vector with {problem}")


def _check_scores(model: ServingModel, items: list[Scored]) -> None:
    if not all(math.isfinite(s.score) for s in items):
        raise UnservableOutput(model.version, "a score is not finite")


@dataclass
class Query:
    user_id: str | None
    history: list[str]
    k: int
    exclude_seen: bool
    exclude: list[str]
    explain: bool


@dataclass
class Scored:
    item_id: str
    score: float
    explain: dict[str, float] | None = None
    because: list[tuple[str, float]] | None = None  # (history item id, share), with explain on personal scores


@dataclass
class Result:
    model_version: str
    items: list[Scored]
    source: str
    cached: bool
    unknown_items: list[str] = field(default_factory=list)


def _dedupe(rows: list[int]) -> list[int]:
    return list(dict.fromkeys(rows))


def merge_rows(*parts: list[int] | np.ndarray) -> np.ndarray:
    """Concatenate row lists keeping the first occurrence (order = recency)."""
    out: list[int] = []
    for p in parts:
        out.extend(int(x) for x in p)
    return np.array(_dedupe(out), dtype=np.int64)


def rank(model: ServingModel, overlay: Overlay, vector: np.ndarray | None, history: np.ndarray | None,
         banned: np.ndarray, banned_side: set[str], k: int, explain: bool
         ) -> tuple[np.ndarray, list[Scored], bool]:
    """Blocking: compute the user vector if needed (tower over `history`), then top-k of base + side items.

    Returns (user vector, items, whether the index could not serve and exact search was used)."""
    if vector is None:
        assert history is not None and len(history)
        vector = model.user_tower.embed(history)
        _check_vector(model, vector)
    rows, scores, exact = model.ip.search(vector, k, banned)
    return vector, finish(model, overlay, vector, rows, scores, banned_side, k, explain), exact


def finish(model: ServingModel, overlay: Overlay, vector: np.ndarray, rows: np.ndarray, scores: np.ndarray,
           banned_side: set[str] | frozenset[str], k: int, explain: bool) -> list[Scored]:
    """The index's hits of one query merged with the side items, cut to k, checked, explained when asked."""
    ids = model.artifact.item_ids
    cands = [Scored(ids[r], s) for r, s in zip(rows.tolist(), scores.tolist(), strict=True)]
    if overlay.side_ids:
        side_scores = overlay.side_vectors @ vector
        cands += [Scored(i, float(s)) for i, s in zip(overlay.side_ids, side_scores, strict=True)
                  if i not in banned_side]
        cands.sort(key=lambda c: -c.score)
    top = cands[:k]
    _check_scores(model, top)
    if explain:
        base_rows = {ids[r]: r for r in rows.tolist()}
        names = model.manifest.components
        sel = [c for c in top if c.item_id in base_rows]
        if sel:
            r = np.array([base_rows[c.item_id] for c in sel])
            contrib = model.artifact.item_components[:, r, :] @ vector  # [C, n]
            total = contrib.sum(axis=0)
            for j, c in enumerate(sel):
                denom = total[j] if abs(total[j]) > 1e-12 else 1e-12
                c.explain = {n: float(contrib[ci, j] / denom) for ci, n in enumerate(names)}
    return top


def rank_many(model: ServingModel, overlay: Overlay, plans: list[Plan]
              ) -> list[tuple[np.ndarray, list[Scored], bool] | UnservableOutput]:
    """Blocking, for a batch: ONE user-tower run over every history that needs it (padded to the longest), ONE
    index search for every query vector, then `finish` per query: the answers of `rank`, query by query. A query
    whose tower output or scores cannot be served gets its UnservableOutput in its place."""
    dim = model.manifest.embedding_dim
    vectors = np.empty((len(plans), dim), np.float32)
    tower = [i for i, p in enumerate(plans) if p.vector is None]
    if tower:
        vectors[tower] = model.user_tower.embed_many([plans[i].history for i in tower])
    for i, p in enumerate(plans):
        if p.vector is not None:
            vectors[i] = p.vector
    hits = model.ip.search_many(vectors, [p.q.k for p in plans], [p.banned for p in plans])
    out: list[tuple[np.ndarray, list[Scored], bool] | UnservableOutput] = []
    for i, (p, (rows, scores, exact)) in enumerate(zip(plans, hits, strict=True)):
        try:
            if p.vector is None:
                _check_vector(model, vectors[i])
            out.append((vectors[i], finish(model, overlay, vectors[i], rows, scores, p.banned_side, p.q.k,
                                           p.q.explain), exact))
        except UnservableOutput as e:
            out.append(e)
    return out


def popular(model: ServingModel, overlay: Overlay, banned: np.ndarray, k: int, explain: bool = False
            ) -> list[Scored]:
    """The k most popular items not banned; score = the item's share of all training interactions."""
    pop = model.popular_rows
    if len(banned):
        pop = pop[: k + len(banned)]  # the first k not banned are within the first k + len(banned)
        pop = pop[~np.isin(pop, banned)]
    pop = pop[:k]
    share, ids = model.popular_share, model.artifact.item_ids
    if explain:
        return [Scored(ids[r], float(share[r]), {"popularity": 1.0}) for r in pop]
    return [Scored(ids[r], float(share[r])) for r in pop]


def _rows(parts: list[np.ndarray | list[int]]) -> np.ndarray:
    """Banned rows as one int64 array; duplicates are fine (index.search copes), so no sort/unique per request."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return _NO_ROWS
    if len(parts) == 1:
        return np.asarray(parts[0], dtype=np.int64)
    return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])


_NO_ROWS = np.empty(0, np.int64)


@dataclass
class Plan:
    """What answering one query takes, decided from its request and the user's state, before any compute."""

    q: Query
    unknown: list[str]
    banned: np.ndarray
    banned_side: set[str] | frozenset[str]
    source: str
    recent_rows: list[int]
    train_rows: np.ndarray
    vector: np.ndarray | None = None  # known (cached or trained): no tower run
    history: np.ndarray | None = None  # rows for the user tower when `vector` is None
    cached: bool = False
    cache_it: bool = False
    state: UserState | None = None
    cache_lookup: bool = False  # a user's vector was looked for (counted as a cache hit or miss)

    @property
    def popular(self) -> bool:
        return self.source == "popular"

    def because_history(self) -> np.ndarray:
        """The history `because` explains against: what the tower read, or what it would read."""
        return self.history if self.history is not None else merge_rows(self.recent_rows, self.train_rows)


def make_plan(q: Query, model: ServingModel, st: UserState | None) -> Plan:
    """Which user vector (module docstring), what to exclude. Pure: the user's state `st` was read already."""
    overlay = model.overlay
    req_rows, unknown = model.rows_of(q.history) if q.history else ([], [])
    user_row = model.user_row.get(q.user_id) if q.user_id else None
    cached_vec, recent_ids = (st.vector, st.recent) if st is not None else (None, [])
    recent_rows = model.rows_of(recent_ids)[0] if recent_ids else []
    train_rows = model.artifact.seen_items(user_row) if user_row is not None else _NO_ROWS

    # What to exclude: hidden items always, `exclude` always, what the user has seen unless asked not to.
    excl_rows = model.rows_of(q.exclude)[0] if q.exclude else []
    banned_parts: list = [overlay.hidden_rows, excl_rows]
    banned_side: set[str] | frozenset[str] = overlay.deleted
    if overlay.side_ids and (q.exclude or (q.exclude_seen and (q.history or recent_ids))):
        banned_side = overlay.deleted.union(q.exclude, *((q.history, recent_ids) if q.exclude_seen else ()))
    if q.exclude_seen:
        banned_parts += [req_rows, recent_rows, train_rows]
    plan = Plan(q, unknown, _rows(banned_parts), banned_side, "user", recent_rows, train_rows, state=st,
                cache_lookup=bool(q.user_id) and not req_rows)
    if req_rows:
        plan.history, plan.source = merge_rows(req_rows, recent_rows, train_rows), "history"
    elif q.user_id and cached_vec is not None:
        plan.vector, plan.cached = cached_vec, True
        plan.source = "user" if user_row is not None else "history"
    elif q.user_id and recent_rows:
        plan.history, plan.cache_it = merge_rows(recent_rows, train_rows), True
        plan.source = "user" if user_row is not None else "history"
    elif user_row is not None:
        plan.vector, plan.cache_it = model.artifact.user_vectors[user_row], True
    else:
        plan.source = "popular"
    return plan


async def recommend(q: Query, model: ServingModel, state: UserStateStore, pool: Executor,
                    metrics: Metrics, inline_max_items: int = 0) -> Result:
    """Answer one /recommend query against exactly one model version (`model`)."""
    st = await state.get(model.version, q.user_id, model.manifest.embedding_dim) if q.user_id else None
    plan = make_plan(q, model, st)
    overlay = model.overlay
    if plan.popular:
        metrics.fallback_popular.inc()
        items = popular(model, overlay, plan.banned, q.k, q.explain)  # a precomputed order: never worth a thread hop
        return Result(model.version, items, "popular", False, plan.unknown)
    if plan.cache_lookup:
        (metrics.cache_hit if plan.cached else metrics.cache_miss).inc()
    if plan.vector is not None and model.ip.size <= inline_max_items:
        vector, items, exact = rank(model, overlay, plan.vector, None, plan.banned, plan.banned_side, q.k, q.explain)
    else:
        vector, items, exact = await asyncio.get_running_loop().run_in_executor(
            pool, rank, model, overlay, plan.vector, plan.history, plan.banned, plan.banned_side, q.k, q.explain)
    if exact:
        metrics.fallback_exact.inc()
    if q.explain and items:
        await _add_because(model, overlay, plan.because_history(), items, pool)
    if plan.cache_it and q.user_id and st is not None:
        await state.put_vector(model.version, q.user_id, vector, st)
    return Result(model.version, items, plan.source, plan.cached, plan.unknown)


async def recommend_batch(queries: list[Query], model: ServingModel, state: UserStateStore, pool: Executor,
                          metrics: Metrics) -> list[Result | UnservableOutput]:
    """Answer many queries against one model version: the users' states in one pipelined Redis round trip, one
    batched user-tower run, one batched index search, the new vectors cached in one round trip. Answers are those
    of `recommend`, query by query (a query the model cannot serve gets its UnservableOutput in its place)."""
    users = [q.user_id for q in queries if q.user_id]
    states = await state.get_many(model.version, users, model.manifest.embedding_dim) if users else []
    by_user = iter(states)
    plans = [make_plan(q, model, next(by_user) if q.user_id else None) for q in queries]
    overlay = model.overlay
    out: list[Result | UnservableOutput | None] = [None] * len(plans)
    todo = []
    for i, p in enumerate(plans):
        if p.popular:
            metrics.fallback_popular.inc()
            out[i] = Result(model.version, popular(model, overlay, p.banned, p.q.k, p.q.explain), "popular", False,
                            p.unknown)
            continue
        if p.cache_lookup:
            (metrics.cache_hit if p.cached else metrics.cache_miss).inc()
        todo.append(i)
    if todo:
        ranked = await asyncio.get_running_loop().run_in_executor(pool, rank_many, model, overlay,
                                                                  [plans[i] for i in todo])
        writes = []
        for i, answer in zip(todo, ranked, strict=True):
            if isinstance(answer, UnservableOutput):
                out[i] = answer
                continue
            vector, items, exact = answer
            p = plans[i]
            if exact:
                metrics.fallback_exact.inc()
            if p.q.explain and items:
                await _add_because(model, overlay, p.because_history(), items, pool)
            if p.cache_it and p.q.user_id and p.state is not None:
                writes.append((p.q.user_id, vector, p.state))
            out[i] = Result(model.version, items, p.source, p.cached, p.unknown)
        if writes:
            await state.put_many(model.version, writes)
    return [r for r in out if r is not None]


async def _add_because(model: ServingModel, overlay: Overlay, history: np.ndarray, items: list[Scored],
                       pool: Executor) -> None:
    """Attach `because` (service/explain.py) to each item: one more tower run, in the pool."""
    found = await asyncio.get_running_loop().run_in_executor(
        pool, explain.because, model, overlay, history, [s.item_id for s in items])
    for s, b in zip(items, found, strict=True):
        s.because = b


async def similar(model: ServingModel, item_id: str, k: int, pool: Executor, inline_max_items: int = 0
                  ) -> list[Scored]:
    """Nearest items to `item_id` by cosine of item vectors (itself and hidden items excluded).

    Raises KeyError when the id is neither in the catalogue nor a side item, UnservableOutput when a score is not
    finite (a faulty index: the 503 of every such answer, never a 500 or invalid JSON)."""
    overlay = model.overlay
    if item_id in overlay.deleted:
        raise KeyError(item_id)
    row = model.item_row.get(item_id)
    side_pos = overlay.side_pos.get(item_id)
    if row is None and side_pos is None:
        raise KeyError(item_id)

    def run() -> list[Scored]:
        q = overlay.side_vectors[side_pos] if side_pos is not None else model.artifact.item_vectors[row]
        banned = overlay.hidden_rows if row is None else _rows([overlay.hidden_rows, [row]])
        rows, scores, _ = model.cos.search(q, k, banned)
        ids = model.artifact.item_ids
        out = [Scored(ids[r], s) for r, s in zip(rows.tolist(), scores.tolist(), strict=True)]
        if overlay.side_ids:
            qn = model.cos.prepare(q)[0]
            sims = overlay.side_norm() @ qn
            out += [Scored(i, float(s)) for i, s in zip(overlay.side_ids, sims, strict=True) if i != item_id]
            out.sort(key=lambda c: -c.score)
        out = out[:k]
        _check_scores(model, out)  # the last guard, as for /recommend: an index that disagrees with the vectors
        return out

    if model.cos.size <= inline_max_items:
        return run()
    return await asyncio.get_running_loop().run_in_executor(pool, run)
