"""`mrdib retrain`: state, lock, exactly-once event consumption (real Redis), merge of events and of the
service's side items (PUT /items), quality gate (decision, log event, manifest), warm start, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from mrdib.redis_keys import KeyLayout
from tests._service_helpers import free_port
from training.data.dataset import TEST, TRAIN, VALID, InteractionDataset
from training.retrain import (
    EXIT_BAD_INPUT,
    EXIT_LOCKED,
    EXIT_UNAVAILABLE,
    LockedError,
    RetrainError,
    RetrainSettings,
    RetrainState,
    SideRecord,
    StreamEvent,
    clear_side_items,
    gate_decision,
    gate_scores,
    load_state,
    merge_events,
    merge_side_items,
    read_events,
    read_side_items,
    read_streams,
    retrain_lock,
    run_retrain,
    save_state,
    side_item_keys,
    streams_to_read,
    warm_start_state,
    write_mmrec,
)

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_client():
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    keys: list[str] = []
    yield client, keys
    if keys:
        client.delete(*keys)
    client.close()


def _stream_key() -> str:
    return f"test-ops:{uuid.uuid4().hex}:events"


def _xadd(client, stream: str, user: str, item: str, type_: str = "click") -> str:
    """Append an event exactly as the service does (service.events.Event.fields)."""
    from service.events import Event

    ev = Event.new(user, item, type_, datetime(2026, 11, 1, tzinfo=UTC), None)
    pairs = ev.fields()
    return client.xadd(stream, dict(zip(pairs[::2], pairs[1::2], strict=True))).decode()


def _event(user: str, item: str, type_: str = "click") -> StreamEvent:
    return StreamEvent(event_id=uuid.uuid4().hex, user_id=user, item_id=item, type=type_,
                       ts=datetime(2026, 11, 1, tzinfo=UTC))


def _tiny_dataset() -> InteractionDataset:
    # 3 users x 6 items; user 0 has train/valid/test rows, users 1-2 train only.
    users = np.array([0, 0, 0, 0, 1, 1, 2], dtype=np.int64)
    items = np.array([0, 1, 2, 3, 0, 4, 5], dtype=np.int64)
    splits = np.array([TRAIN, TRAIN, VALID, TEST, TRAIN, TRAIN, TRAIN], dtype=np.int8)
    rng = np.random.default_rng(0)
    return InteractionDataset(
        name="tiny", users=users, items=items, timestamps=np.arange(7, dtype=np.int64) + 1000, splits=splits,
        user_ids=["u0", "u1", "u2"], item_ids=[f"i{k}" for k in range(6)],
        features={"text": rng.normal(size=(6, 4)).astype(np.float32)},
    )


# ---------------------------------------------------------------------------------------------- state / lock


def test_state_roundtrip_and_errors(tmp_path: Path) -> None:
    fresh = load_state(tmp_path, "s1")
    assert fresh.cursors == {} and fresh.cursor("s1:{u3}") == "0-0" and fresh.dataset is None
    save_state(tmp_path, fresh.model_copy(update={"cursors": {"s1:{u3}": "17-3"}, "events_consumed": 5}))
    again = load_state(tmp_path, "s1")
    assert again.cursor("s1:{u3}") == "17-3" and again.events_consumed == 5 and again.schema_version == 2
    with pytest.raises(RetrainError, match="stream 's1'"):
        load_state(tmp_path, "other-stream")
    save_state(tmp_path, again.model_copy(update={"cursors": {"s1:{u3}": "17"}}))
    with pytest.raises(RetrainError, match=r"position '17' of stream 's1:\{u3\}'"):
        load_state(tmp_path, "s1")
    (tmp_path / "retrain" / "state.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(RetrainError, match=r"state\.json"):
        load_state(tmp_path, "s1")


def test_state_of_the_single_stream_layout_is_read_as_its_position_in_that_stream(tmp_path: Path) -> None:
    """A state.json written before the event streams were sharded (schema 1: one stream, one `last_id`) is the
    position in the pre-shard stream, which a run still reads first: nothing read twice, nothing skipped."""
    (tmp_path / "retrain").mkdir()
    (tmp_path / "retrain" / "state.json").write_text(json.dumps({
        "schema_version": 1, "stream": "mrdib:events", "last_id": "1700000000000-4", "dataset": "d1",
        "events_consumed": 12, "runs": 3}), encoding="utf-8")  # fmt: skip
    state = load_state(tmp_path, "mrdib:events")
    assert state.cursors == {"mrdib:events": "1700000000000-4"} and state.dataset == "d1" and state.runs == 3
    assert streams_to_read(KeyLayout(stream="mrdib:events", shards=2), state.cursors) == [
        "mrdib:events", "mrdib:events:{u0}", "mrdib:events:{u1}"]  # fmt: skip


def test_lock_refuses_second_holder(tmp_path: Path) -> None:
    with retrain_lock(tmp_path), pytest.raises(LockedError, match="another retraining run"), retrain_lock(tmp_path):
        pass
    with retrain_lock(tmp_path):  # released after the first holder left
        pass


def _retrain_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`mrdib retrain ARGS` as a real process, with none of the caller's MRDIB_* / REDIS_URL settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRDIB_") and k != "REDIS_URL"}
    cmd = [sys.executable, "-c", "import sys; from mrdib.cli import app; sys.argv[0] = 'mrdib'; app()", "retrain",
           *args]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_cli_exits_75_while_locked(tmp_path: Path) -> None:
    with retrain_lock(tmp_path):
        r = _retrain_cli(tmp_path, "--artifacts", str(tmp_path), "--base", str(tmp_path / "none"))
    assert r.returncode == EXIT_LOCKED, r.stderr
    assert "holds the lock" in r.stderr


def test_cli_exits_2_on_a_bad_tolerance(tmp_path: Path) -> None:
    r = _retrain_cli(tmp_path, "--artifacts", str(tmp_path), "--base", str(tmp_path), "--tolerance", "5")
    assert r.returncode == EXIT_BAD_INPUT, r.stdout + r.stderr
    assert "bad settings: --tolerance:" in r.stderr and "less than or equal to 1" in r.stderr and "5.0" in r.stderr
    assert not (tmp_path / "retrain").exists()  # refused before anything was touched


@pytest.mark.redis
@pytest.mark.parametrize("case", ["missing", "invalid"])
def test_cli_exits_2_on_a_bad_base_dataset(tmp_path: Path, redis_client, case: str) -> None:
    _, keys = redis_client
    stream = _stream_key()
    keys.append(stream)
    base = tmp_path / "dataset"
    if case == "invalid":  # a folder that is not an MMRec dataset: the loader names the file and the problem
        base.mkdir()
        (base / "x.inter").write_text("userID\titemID\n0\t0\n", encoding="utf-8")
    r = _retrain_cli(tmp_path, "--artifacts", str(tmp_path / "artifacts"), "--base", str(base), "--redis-url",
                     REDIS_URL, "--stream", stream, "--key-prefix", stream + ":")  # fmt: skip
    assert r.returncode == EXIT_BAD_INPUT, r.stdout + r.stderr
    assert str(base) in r.stderr
    if case == "missing":
        assert "base dataset folder does not exist (--base / MRDIB_DATASET)" in r.stderr


def test_cli_exits_69_when_redis_is_unreachable(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    r = _retrain_cli(tmp_path, "--artifacts", str(tmp_path), "--base", str(tmp_path), "--redis-url", url)
    assert r.returncode == EXIT_UNAVAILABLE, r.stdout + r.stderr
    assert f"Redis unreachable at {url}" in r.stderr
    assert not (tmp_path / "retrain" / "state.json").exists()


# ---------------------------------------------------------------------------------------------- events


def test_read_events_exactly_once_across_reads(redis_client) -> None:
    client, keys = redis_client
    stream = _stream_key()
    keys.append(stream)
    assert read_events(client, stream, "0-0").last_id == "0-0"  # no stream yet: nothing, position kept
    ids = [_xadd(client, stream, f"u{k}", f"i{k}") for k in range(3)]
    client.xadd(stream, {"garbage": "1"})
    first = read_events(client, stream, "0-0", batch=2)  # batch 2 forces several XRANGE pages
    assert [sid for sid, _ in first.events] == ids
    assert first.malformed == 1
    assert [e.user_id for _, e in first.events] == ["u0", "u1", "u2"]
    more = [_xadd(client, stream, "u9", f"i{k}") for k in range(2)]
    second = read_events(client, stream, first.last_id)
    assert [sid for sid, _ in second.events] == more
    third = read_events(client, stream, second.last_id)
    assert third.events == [] and third.last_id == second.last_id and not third.lost_before_read


def _service_xadd(client, layout: KeyLayout, user: str, item: str) -> str:
    """Append an event where the service puts it: the user's shard stream."""
    return _xadd(client, layout.user_stream(user), user, item)


def test_read_streams_reads_each_shard_and_the_old_stream_once(redis_client) -> None:
    client, keys = redis_client
    base = _stream_key()
    layout = KeyLayout(stream=base, shards=4)
    keys += [base, *layout.streams()]
    old = [_xadd(client, base, "u-old", "i0")]  # written by the service before sharding
    users = [f"u{k}" for k in range(12)]
    assert len({layout.shard(u) for u in users}) > 1  # the users really are spread over several streams
    for k, u in enumerate(users):
        _service_xadd(client, layout, u, f"i{k}")
    state: dict[str, str] = {}
    first = read_streams(client, streams_to_read(layout, state), state, batch=2)
    assert first.events[0][1].user_id == "u-old" and first.events[0][0] == old[0]
    assert sorted(e.user_id for _, e in first.events) == sorted(["u-old", *users])
    assert sum(first.per_stream.values()) == 13 and set(first.cursors) == {base} | set(first.per_stream)
    more = [("u3", "i9"), ("u7", "i8"), ("u3", "i7")]
    for u, i in more:
        _service_xadd(client, layout, u, i)
    second = read_streams(client, streams_to_read(layout, first.cursors), first.cursors)
    assert [(e.user_id, e.item_id) for _, e in second.events if e.user_id == "u3"] == [("u3", "i9"), ("u3", "i7")]
    assert sorted((e.user_id, e.item_id) for _, e in second.events) == sorted(more)  # only the new ones
    third = read_streams(client, streams_to_read(layout, second.cursors), second.cursors)
    assert third.events == [] and third.cursors == second.cursors


def test_read_events_reports_trimmed_stream(redis_client) -> None:
    client, keys = redis_client
    stream = _stream_key()
    keys.append(stream)
    first = _xadd(client, stream, "u1", "i1")
    for k in range(5):
        _xadd(client, stream, "u1", f"i{k + 2}")
    client.xtrim(stream, maxlen=2, approximate=False)
    batch = read_events(client, stream, first)
    assert batch.lost_before_read and "trimmed" in batch.warnings[0]
    assert len(batch.events) == 2


# ---------------------------------------------------------------------------------------------- merge


def test_merge_appends_and_counts() -> None:
    ds = _tiny_dataset()
    events = [
        _event("u1", "i1"),  # new pair of a known user
        _event("u1", "i1"),  # repeated in the events
        _event("u0", "i0"),  # already in the data
        _event("u2", "i-unknown"),  # item outside the catalogue
        _event("u-new", "i0"), _event("u-new", "i1"), _event("u-new", "i2"),  # new user, 3 interactions
        _event("u2", "i3", "impression"),  # filtered type
        _event("u\tx", "i3"),  # would break the TSV files
    ]  # fmt: skip
    merged, rep = merge_events(ds, events, seed=1, event_types=["click"])
    assert (rep.added, rep.skipped_duplicate, rep.skipped_unknown_item, rep.skipped_type, rep.skipped_bad_id) == (
        4, 2, 1, 1, 1)  # fmt: skip
    assert rep.events == 9 and rep.new_users == 1 and rep.users_with_new_interactions == 2
    assert merged.user_ids == ["u0", "u1", "u2", "u-new"]
    n = len(ds.users)
    for a in ("users", "items", "timestamps", "splits"):  # append-only: old rows untouched
        np.testing.assert_array_equal(getattr(merged, a)[:n], getattr(ds, a))
    new_user_splits = sorted(merged.splits[n:][merged.users[n:] == 3].tolist())
    assert new_user_splits == [TRAIN, VALID, TEST]  # MMRec's rule for 3 interactions: n-2 / 1 / 1
    assert merged.splits[n:][merged.users[n:] == 1].tolist() == [TRAIN]  # < 3 new rows: train only
    assert sum(rep.new_by_split.values()) == rep.added


def test_merge_is_deterministic_and_roundtrips_through_mmrec(tmp_path: Path) -> None:
    from training.data.mmrec import load_mmrec

    ds = _tiny_dataset()
    events = [_event(f"n{k % 4}", f"i{k % 6}") for k in range(24)]
    a, _ = merge_events(ds, events, seed=7)
    b, _ = merge_events(ds, events, seed=7)
    np.testing.assert_array_equal(a.splits, b.splits)
    back = load_mmrec(write_mmrec(a, tmp_path / "merged"))
    assert back.user_ids == a.user_ids and back.item_ids == a.item_ids
    for attr in ("users", "items", "timestamps", "splits"):
        np.testing.assert_array_equal(getattr(back, attr), getattr(a, attr))
    np.testing.assert_array_equal(back.features["text"], a.features["text"])
    with pytest.raises(FileExistsError):
        write_mmrec(a, tmp_path / "merged")


# ---------------------------------------------------------------------------------------------- side items


def _side(item_id: str, vec, seconds: int = 0, modality: str = "text") -> SideRecord:
    return SideRecord(item_id, {modality: np.asarray(vec, dtype=np.float32)},
                    datetime(2026, 11, 1, tzinfo=UTC) + timedelta(seconds=seconds), f"raw-{item_id}".encode())


def test_merge_side_items_appends_updates_and_rejects(tmp_path: Path) -> None:
    ds = _tiny_dataset()
    before = ds.features["text"].copy()
    items = [
        _side("new-b", [1, 2, 3, 4], seconds=2), _side("new-a", [5, 6, 7, 8], seconds=1),  # appended in PUT order
        _side("i1", [9, 9, 9, 9]),  # a catalogue item with new features
        _side("i2", ds.features["text"][2]),  # already in the data as it is
        _side("bad-dim", [1, 2, 3]), _side("bad-modality", [1, 2, 3, 4], modality="image"),
        _side("bad-nan", [1, float("nan"), 3, 4]), _side("bad\tid", [1, 2, 3, 4]),
    ]  # fmt: skip
    out, rep, merged, warnings = merge_side_items(ds, items)
    assert (rep.items, rep.added, rep.updated, rep.unchanged, rep.rejected) == (8, 2, 1, 1, 4)
    assert out.item_ids == [*ds.item_ids, "new-a", "new-b"]
    np.testing.assert_array_equal(out.features["text"][6:], [[5, 6, 7, 8], [1, 2, 3, 4]])
    np.testing.assert_array_equal(out.features["text"][1], [9, 9, 9, 9])
    np.testing.assert_array_equal(np.delete(out.features["text"][:6], 1, axis=0), np.delete(before, 1, axis=0))
    np.testing.assert_array_equal(ds.features["text"], before)  # pure: the input is untouched
    for a in ("users", "items", "splits"):  # interactions unchanged
        np.testing.assert_array_equal(getattr(out, a), getattr(ds, a))
    assert sorted(m.item_id for m in merged) == ["i1", "i2", "new-a", "new-b"]
    assert len(warnings) == 4 and any("'bad-dim'" in w and "3 values, the dataset has 4" in w for w in warnings)
    # Events on the new items are interactions now, not unknown items.
    with_events, er = merge_events(out, [_event("u0", "new-a"), _event("u-new", "new-b"), _event("u1", "ghost")], 1)
    assert (er.added, er.skipped_unknown_item) == (2, 1)
    # The same side index again (a run after a failed gate): nothing new.
    again, rep2, merged2, _ = merge_side_items(out, items)
    assert again is out and (rep2.added, rep2.updated, rep2.unchanged, rep2.rejected) == (0, 0, 4, 4)
    assert len(merged2) == 4
    from training.data.mmrec import load_mmrec

    back = load_mmrec(write_mmrec(with_events, tmp_path / "merged"))
    assert back.item_ids == with_events.item_ids
    np.testing.assert_array_equal(back.features["text"], with_events.features["text"])


def test_side_item_metadata_is_merged_and_written(tmp_path: Path) -> None:
    """Display fields a PUT carried replace the item's; without them a known item keeps its own; they survive
    the event merge and the dataset written for training (so the next artifact serves them)."""
    from dataclasses import replace

    from training.data.mmrec import load_mmrec

    ds = replace(_tiny_dataset(), item_meta=[{"title": f"Item {k}"} for k in range(6)])
    items = [
        replace(_side("new-a", [1, 2, 3, 4], seconds=1), meta={"title": "New A", "price": 3.5}),
        _side("new-b", [5, 6, 7, 8], seconds=2),  # no display fields
        replace(_side("i1", ds.features["text"][1]), meta={"title": "Renamed 1"}),  # same features, new title
        _side("i2", [9, 9, 9, 9]),  # new features, no meta: keeps "Item 2"
        replace(_side("i3", ds.features["text"][3]), meta={"title": "Item 3"}),  # nothing new
    ]
    out, rep, merged, _ = merge_side_items(ds, items)
    assert (rep.added, rep.updated, rep.unchanged) == (2, 2, 1) and len(merged) == 5
    assert out.item_meta == [{"title": "Item 0"}, {"title": "Renamed 1"}, {"title": "Item 2"}, {"title": "Item 3"},
                             {"title": "Item 4"}, {"title": "Item 5"}, {"title": "New A", "price": 3.5}, {}]
    assert ds.item_meta[1] == {"title": "Item 1"}  # pure
    with_events, _ = merge_events(out, [_event("u0", "new-a")], 1)
    assert with_events.item_meta == out.item_meta
    back = load_mmrec(write_mmrec(with_events, tmp_path / "merged"))
    assert back.item_meta == out.item_meta
    # A catalogue without metadata gets records once a PUT brings some.
    bare, _, _, _ = merge_side_items(_tiny_dataset(), [items[0]])
    assert bare.item_meta == [{}] * 6 + [{"title": "New A", "price": 3.5}]
    plain, _, _, _ = merge_side_items(_tiny_dataset(), [items[1]])
    assert plain.item_meta is None


def test_side_item_codec_carries_metadata() -> None:
    from mrdib.side_items import SideItem, decode_side, encode_side

    item = SideItem({"text": np.arange(3, dtype=np.float32)}, datetime(2026, 1, 2, tzinfo=UTC),
                    {"title": "Été", "tags": ["a"]})
    back = decode_side(encode_side(item))
    assert back.meta == item.meta and back.put_at == item.put_at
    old = '{"features": {"text": [1.0, 2.0]}, "put_at": "2026-01-02T00:00:00+00:00"}'  # before metadata existed
    assert decode_side(old).meta is None
    with pytest.raises(ValueError, match=r"unreadable side item record: meta\.title: unsupported value type dict"):
        decode_side('{"features": {"text": [1.0]}, "put_at": "2026-01-02T00:00:00+00:00", "meta": {"title": {}}}')


@pytest.mark.redis
def test_side_items_in_the_services_format_are_read_and_cleared(redis_client) -> None:
    """Records encoded by the shared codec (mrdib/side_items.py, what the service writes) under the service's keys
    (RedisLink.items_keys) are read,
    merged and, after a promotion, cleared -- except one PUT again meanwhile. (tests/test_ops_e2e.py does the
    same through the running service's PUT/DELETE routes.)"""
    from mrdib.side_items import SideItem, encode_side

    client, keys = redis_client
    prefix = f"test-ops:{uuid.uuid4().hex}:"
    side_key, deleted_key, ver_key = side_item_keys(prefix)
    keys += [side_key, deleted_key, ver_key]

    def put(item_id: str, x: np.ndarray) -> None:
        client.hset(side_key, item_id, encode_side(SideItem({"text": x}, datetime.now(UTC))))
        client.incr(ver_key)

    feats = {"sku-1": np.arange(4, dtype=np.float32), "sku-2": np.full(4, 0.5, np.float32)}
    for item_id, x in feats.items():
        put(item_id, x)
    client.sadd(deleted_key, "sku-3", "i0")
    client.hset(side_key, "junk", "not json")  # written by something else
    snap = read_side_items(client, prefix)
    assert set(snap.items) == {"sku-1", "sku-2"} and snap.deleted == {"sku-3", "i0"}
    assert "unreadable side item record" in snap.unreadable["junk"]
    for item_id, x in feats.items():
        np.testing.assert_array_equal(snap.items[item_id].features["text"], x)
    _, rep, merged, _ = merge_side_items(_tiny_dataset(), snap.items.values())
    assert rep.added == 2
    put("sku-2", np.zeros(4, np.float32))  # changed while the run trained
    ver = int(client.get(ver_key))
    assert clear_side_items(client, merged, prefix) == 1  # sku-1; the newer sku-2 waits for the next run
    left = read_side_items(client, prefix)
    assert set(left.items) == {"sku-2"} and left.items["sku-2"].features["text"].sum() == 0
    assert "junk" in left.unreadable and left.deleted == {"sku-3", "i0"}  # never touched
    assert int(client.get(ver_key)) == ver  # clearing is not an item change (see clear_side_items)


# ---------------------------------------------------------------------------------------------- gate


def test_gate_decision_both_ways() -> None:
    assert gate_decision(0.30, 0.30, 0.01)[0]
    assert gate_decision(0.295, 0.30, 0.01)[0]  # within tolerance
    ok, why = gate_decision(0.25, 0.30, 0.01)
    assert not ok and "< current" in why
    assert gate_decision(0.0, None, 0.01) == (True, "no model is being served")
    assert not gate_decision(float("nan"), 0.1, 0.01)[0]


class _FakeArtifact:
    def __init__(self, user_ids, item_ids, user_vectors, item_vectors):
        self.user_ids, self.item_ids = user_ids, item_ids
        self.user_vectors, self.item_vectors = user_vectors, item_vectors


def test_gate_scores_rank_a_good_model_above_a_bad_one() -> None:
    # 30 users x 40 items; each user's valid item is one-hot-recoverable by the "oracle" embedding.
    rng = np.random.default_rng(3)
    n_u, n_i = 30, 40
    users, items, splits = [], [], []
    for u in range(n_u):
        picks = rng.choice(n_i, size=4, replace=False)
        users += [u] * 4
        items += picks.tolist()
        splits += [TRAIN, TRAIN, VALID, TEST]
    ds = InteractionDataset(
        name="g", users=np.array(users), items=np.array(items), timestamps=np.zeros(len(users), np.int64),
        splits=np.array(splits, np.int8), user_ids=[f"u{k}" for k in range(n_u)],
        item_ids=[f"i{k}" for k in range(n_i)], features={"m": np.ones((n_i, 2), np.float32)},
    )  # fmt: skip
    valid = ds.csr(VALID).toarray().astype(np.float32)
    good_u, good_i = valid, np.eye(n_i, dtype=np.float32)  # scores = valid indicator: recall@20 = 1
    bad_u = rng.normal(size=(n_u, 8)).astype(np.float32)
    bad_i = rng.normal(size=(n_i, 8)).astype(np.float32)
    # The served model knows only the first 20 users: both are measured on those.
    current = _FakeArtifact(ds.user_ids[:20], ds.item_ids, bad_u[:20], bad_i)
    cand, cur, n = gate_scores(ds, good_u, good_i, current)
    assert n == 20 and cand == pytest.approx(1.0) and cur is not None and cur < 0.9
    assert gate_decision(cand, cur, 0.01)[0]
    worse = _FakeArtifact(ds.user_ids, ds.item_ids, good_u, good_i)
    cand2, cur2, n2 = gate_scores(ds, bad_u, bad_i, worse)
    assert n2 == n_u and cur2 == pytest.approx(1.0) and not gate_decision(cand2, cur2, 0.01)[0]


def test_warm_start_copies_and_grows_rows() -> None:
    torch = pytest.importorskip("torch")
    old = {"user": torch.ones(3, 2), "item": torch.full((4, 2), 2.0), "w": torch.zeros(5)}
    new = {"user": torch.zeros(5, 2), "item": torch.zeros(4, 2), "w": torch.zeros(6), "extra": torch.zeros(1)}
    state, counts = warm_start_state(new, old)
    assert counts == {"copied": 1, "partial": 2, "fresh": 1, "data": 0}
    assert state["user"][:3].eq(1).all() and state["user"][3:].eq(0).all()
    assert state["item"].eq(2).all()
    # Tensors training does not change (item features, feature statistics) are data: the new dataset's.
    state, counts = warm_start_state(new, old, learned={"user", "w", "extra"})
    assert counts == {"copied": 0, "partial": 2, "fresh": 1, "data": 1}
    assert state["item"].eq(0).all() and state["user"][:3].eq(1).all()


# ---------------------------------------------------------------------------------------------- full runs


def _publish_vectors(root: Path, ds, user: np.ndarray, item: np.ndarray, training_config: dict, gate) -> str:
    """Publish given vectors as the *served* model (an oracle the gate must compare against). Only the
    vectors matter to the gate, so the ONNX/FAISS files are stand-ins; candidates always go through the
    real export (training.export.export_checkpoint)."""
    from mrdib.artifact import schema as S
    from mrdib.artifact import store

    stage = store.staging_dir(root)
    np.save(stage / S.ITEM_VECTORS, item.astype(np.float32))
    np.save(stage / S.USER_VECTORS, user.astype(np.float32))
    np.save(stage / S.ITEM_COMPONENTS, np.stack([item]).astype(np.float32))
    np.save(stage / S.ITEM_POPULARITY, ds.item_popularity())
    (stage / S.ITEM_IDS).write_text(json.dumps(ds.item_ids))
    (stage / S.USER_IDS).write_text(json.dumps(ds.user_ids))
    csr = ds.train_csr()
    np.savez(stage / S.TRAIN_CSR, indptr=csr.indptr.astype(np.int64), indices=csr.indices.astype(np.int64))
    for name in (S.USER_TOWER, S.ITEM_TOWER, S.INDEX_IP, S.INDEX_COS):
        (stage / name).write_bytes(b"stand-in")
    m = store.publish(stage, {
        "created_at": datetime.now(UTC), "backbone": "bpr", "training_config": training_config,
        "modalities": [{"name": k, "dim": v} for k, v in ds.feature_dims.items()],
        "embedding_dim": int(item.shape[1]), "n_users": ds.n_users, "n_items": ds.n_items,
        "n_train_interactions": int(csr.nnz), "max_history": 50, "components": ["collaborative"],
        "data_fingerprint": ds.fingerprint(), "quality_gate": gate,
        "indexes": {"ip": {"file": S.INDEX_IP, "factory": "Flat", "metric": "ip"},
                    "cosine": {"file": S.INDEX_COS, "factory": "Flat", "metric": "cosine"}},
    }, root)  # fmt: skip
    return m.model_version


def _recall_at_20(ds: InteractionDataset, art, users_of: list[str]) -> tuple[float, int]:
    """Mean valid Recall@20 (hits / valid items, MMRec's definition) of an artifact's vectors over the users of
    `ds` that `users_of` knows and that have valid items; train items masked, items the artifact lacks never
    recommended. Deliberately naive numpy, independent of training.evaluation."""
    urow = {x: r for r, x in enumerate(art.user_ids)}
    irow = {x: r for r, x in enumerate(art.item_ids)}
    known = set(users_of)
    train, valid = ds.csr(TRAIN), ds.csr(VALID)
    recalls = []
    for u, uid in enumerate(ds.user_ids):
        truth = set(valid.indices[valid.indptr[u]:valid.indptr[u + 1]].tolist())
        if uid not in known or not truth:
            continue
        scores = np.full(ds.n_items, -np.inf)
        for i, iid in enumerate(ds.item_ids):
            if iid in irow:
                scores[i] = float(art.user_vectors[urow[uid]] @ art.item_vectors[irow[iid]])
        scores[train.indices[train.indptr[u]:train.indptr[u + 1]]] = -np.inf
        top = np.argsort(-scores, kind="stable")[:20]
        recalls.append(len(truth & set(top.tolist())) / len(truth))
    return float(np.mean(recalls)), len(recalls)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file's (mtime, size), except the lock file, which names its latest holder by design."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in root.rglob("*") if p.is_file() and p.name != "retrain.lock"}  # fmt: skip


@pytest.mark.redis
def test_two_runs_consume_events_exactly_once(tmp_path: Path, redis_client) -> None:
    pytest.importorskip("torch")
    from mrdib.artifact import store
    from training.data.load import load_dataset
    from training.data.synth import SynthConfig, generate_synthetic

    client, keys = redis_client
    stream = _stream_key()
    keys.append(stream)
    base = generate_synthetic(SynthConfig(n_users=60, n_items=50, n_interactions=900, seed=1), tmp_path / "base")
    base_ds = load_dataset(base)
    root = tmp_path / "artifacts"
    settings = RetrainSettings(artifacts=root, base=base, redis_url=REDIS_URL, stream=stream, backbone="bpr",
                               mrdib=False, epochs=2, device="cpu", tolerance=1.0, tower_epochs=3)  # fmt: skip

    # Run 1: no model yet -> trains on base + 4 events and promotes.
    known_u, known_i = base_ds.user_ids[0], base_ds.item_ids
    for k in range(3):
        _xadd(client, stream, "visitor-1", known_i[k])
    _xadd(client, stream, known_u, "not-in-catalogue")
    r1 = run_retrain(settings, client=client)
    assert r1.status == "promoted" and r1.exit_code == 0, r1.details
    assert r1.details["merge"]["added"] == 3 and r1.details["merge"]["skipped_unknown_item"] == 1
    v1 = store.current_version(root)
    assert v1 == r1.details["version"]
    assert store.read_manifest(root / v1).quality_gate["passed"] is True
    store.verify_artifact(root / v1)  # a complete artifact from the real export: towers, indexes, checksums
    state = RetrainState.model_validate_json((root / "retrain" / "state.json").read_text())
    assert state.events_consumed == 4 and state.dataset is not None

    # Run 2: two new events -> exactly those two are merged on top of run 1's dataset.
    _xadd(client, stream, "visitor-2", known_i[5])
    _xadd(client, stream, "visitor-1", known_i[6])
    with capture_logs() as logs:
        r2 = run_retrain(settings, client=client)
    assert r2.status == "promoted" and r2.details["events"] == 2 and r2.details["merge"]["added"] == 2
    assert r2.details["warm_start"]["from_version"] == v1  # the checkpoint run 1 kept under retrain/checkpoints
    merged = load_dataset(root / "retrain" / "datasets" / RetrainState.model_validate_json(
        (root / "retrain" / "state.json").read_text()).dataset)  # fmt: skip
    assert len(merged.users) == len(base_ds.users) + 5  # 3 + 2: none merged twice
    assert merged.user_ids[-2:] == ["visitor-1", "visitor-2"]
    v2 = store.current_version(root)
    gate = store.read_manifest(root / v2).quality_gate
    assert v2 != v1 and gate["current_version"] == v1 and gate["passed"] is True
    # The manifest's numbers are the valid Recall@20 of the two published models on the run's data, recomputed
    # here from their artifacts with plain numpy (not through the evaluator the gate used).
    a1, a2 = store.load_artifact(root / v1), store.load_artifact(root / v2)
    cand, cur = _recall_at_20(merged, a2, a1.user_ids), _recall_at_20(merged, a1, a1.user_ids)
    assert gate["candidate"] == pytest.approx(cand[0], abs=1e-9) and gate["current"] == pytest.approx(cur[0], abs=1e-9)
    assert gate["n_users"] == cand[1] == cur[1] and 0.0 < cur[0] < 1.0
    # ... and the decision went to the log as one structured event with both numbers and the tolerance.
    events = [e for e in logs if e["event"] == "retrain_gate"]
    assert len(events) == 1, logs
    ev = events[0]
    assert (ev["candidate"], ev["current"], ev["tolerance"], ev["current_version"]) == (
        gate["candidate"], gate["current"], settings.tolerance, v1)  # fmt: skip
    assert ev["decision"] == "promote" and ev["passed"] is True and ev["metric"] == "recall@20"

    # Run 3: nothing new -> nothing to do, nothing written.
    before = _snapshot(root)
    r3 = run_retrain(settings, client=client)
    assert r3.status == "nothing-to-do" and r3.exit_code == 0
    assert _snapshot(root) == before


@pytest.mark.redis
def test_failed_gate_exits_3_keeps_current_and_consumes_events(tmp_path: Path, redis_client) -> None:
    pytest.importorskip("torch")
    from mrdib.artifact import store
    from training.data.load import load_dataset
    from training.data.synth import SynthConfig, generate_synthetic

    client, keys = redis_client
    stream = _stream_key()
    keys.append(stream)
    base = generate_synthetic(SynthConfig(n_users=60, n_items=50, n_interactions=900, seed=2), tmp_path / "base")
    ds = load_dataset(base)
    root = tmp_path / "artifacts"
    # The served model is an oracle: its scores are the validation indicator (recall@20 = 1), which a
    # two-epoch BPR cannot match, so a zero-tolerance gate must reject the candidate.
    oracle = _publish_vectors(root, ds, ds.csr(VALID).toarray(), np.eye(ds.n_items, dtype=np.float32), {}, None)
    _xadd(client, stream, "visitor", ds.item_ids[0])
    settings = RetrainSettings(artifacts=root, base=base, redis_url=REDIS_URL, stream=stream, backbone="bpr",
                               mrdib=False, epochs=2, device="cpu", tolerance=0.0, tower_epochs=3)  # fmt: skip
    r = run_retrain(settings, client=client)
    g = r.details["gate"]
    assert r.status == "gate-failed" and r.exit_code == 3, g
    assert g["current"] == pytest.approx(1.0) and g["candidate"] < 1.0 and g["current_version"] == oracle
    assert store.current_version(root) == oracle  # not promoted
    rejected = root / "retrain" / "rejected"  # the candidate went through the real export, aside
    assert store.current_version(rejected) == r.details["rejected_version"]
    assert store.read_manifest(rejected / r.details["rejected_version"]).quality_gate["passed"] is False
    state = RetrainState.model_validate_json((root / "retrain" / "state.json").read_text())
    assert state.events_consumed == 1 and state.last_run["status"] == "gate-failed"
    before = _snapshot(root)  # the events stay consumed: a re-run has nothing to do
    assert run_retrain(settings, client=client).status == "nothing-to-do"
    assert _snapshot(root) == before


@pytest.mark.redis
def test_first_retrain_warm_starts_from_the_bootstrap_model(tmp_path: Path, redis_client) -> None:
    """The first model was trained by `mrdib train` into a run folder that is still there (quickstart.sh keeps
    runs/<ts>/) and exported; no retraining has run yet. The first retrain finds that checkpoint through the
    manifest, and really starts from its weights: the old users' and items' embeddings are the initial ones,
    and the first epoch's loss is the trained model's level, not a fresh model's."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    from mrdib.artifact import store
    from training.config import load_config
    from training.data.load import load_dataset
    from training.data.synth import SynthConfig, generate_synthetic
    from training.export import export_checkpoint
    from training.retrain import _warm_factory, find_warm_checkpoint
    from training.trainer import ModelContext, train

    client, keys = redis_client
    stream = _stream_key()
    keys.append(stream)
    base = generate_synthetic(SynthConfig(n_users=60, n_items=50, n_interactions=900, seed=4), tmp_path / "base")
    ds = load_dataset(base)
    run = tmp_path / "runs" / "first"
    cfg = load_config(None, {"backbone.name": "bpr", "mrdib.enabled": False}).model_copy(
        update={"data": str(base), "out": str(run), "device": "cpu", "epochs": 12, "lr": 0.01})  # fmt: skip
    first = train(cfg, ds, run, progress=False, curves=False)
    root = tmp_path / "artifacts"
    v0 = export_checkpoint(run, root, tower_epochs=3).model_version
    assert not (root / "retrain").exists()  # never retrained: nothing under retrain/checkpoints
    assert find_warm_checkpoint(root, store.load_current(root, verify=False)) == (run / "model.safetensors", str(run))

    for k in range(3):
        _xadd(client, stream, "visitor", ds.item_ids[k])
    settings = RetrainSettings(artifacts=root, base=base, redis_url=REDIS_URL, stream=stream, key_prefix=stream + ":",
                               epochs=1, device="cpu", tolerance=1.0, tower_epochs=3)  # fmt: skip
    r = run_retrain(settings, client=client)
    assert r.status == "promoted", r.details
    w = r.details["warm_start"]
    assert w["from_version"] == v0 and w["checkpoint"] == str(run / "model.safetensors")
    assert (w["copied"], w["partial"]) == (1, 1)  # BPR: item table as is, user table grown by the visitor
    assert f"warm start from {v0}" in "\n".join(r.lines())
    cold_first = first.history[0]["loss"]["loss"]
    trained = first.history[first.best_epoch]["loss"]["loss"]
    warm_first = r.details["train"]["first_epoch_loss"]
    assert abs(warm_first - trained) < abs(warm_first - cold_first), (cold_first, trained, warm_first)

    # The factory the run used, on the run's dataset: old rows start exactly at the old weights.
    old = load_file(str(run / "model.safetensors"))
    state = RetrainState.model_validate_json((root / "retrain" / "state.json").read_text())
    merged = load_dataset(root / "retrain" / "datasets" / state.dataset)
    assert merged.n_users == ds.n_users + 1
    model = _warm_factory(run / "model.safetensors", v0, {})(cfg, ModelContext.from_dataset(merged,
                                                                                             torch.device("cpu")))
    init = model.state_dict()
    assert torch.equal(init["backbone.user_emb"][: ds.n_users], old["backbone.user_emb"])
    assert torch.equal(init["backbone.item_emb"], old["backbone.item_emb"])
    # The promoted version's own checkpoint is now where the next run looks first.
    v1 = r.details["version"]
    assert find_warm_checkpoint(root, store.load_current(root, verify=False))[0] == (
        root / "retrain" / "checkpoints" / v1 / "model.safetensors")  # fmt: skip


def test_cli_default_artifacts_root_is_the_one_serve_and_quickstart_use(tmp_path: Path) -> None:
    """Without --artifacts, `mrdib retrain` works on mrdib-home/artifacts (relative to the working directory), the
    root quickstart.sh publishes to and `mrdib serve` reads: the lock it finds held is the one under that root."""
    from service.settings import Settings

    root = tmp_path / "mrdib-home" / "artifacts"
    with retrain_lock(root):
        r = _retrain_cli(tmp_path, "--base", str(tmp_path / "none"))
    assert r.returncode == EXIT_LOCKED, r.stdout + r.stderr
    assert "holds the lock" in r.stderr
    assert not (tmp_path / "artifacts").exists()  # the old default is not touched
    assert Settings.model_fields["artifacts"].default == Path("mrdib-home/artifacts")  # serve's default
    assert 'out "$HOME_DIR/artifacts"' in (Path(__file__).parents[1] / "quickstart.sh").read_text()
