"""The one settings object: read from the environment, and really applied where it matters (the Redis pool,
the faiss thread count of every thread that searches)."""

from __future__ import annotations

import threading
from pathlib import Path

import faiss
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from redis.asyncio import BlockingConnectionPool

from service.api import create_app
from service.items import ItemChanges
from service.metrics import Metrics
from service.model_store import ModelStore, Overlay, ServingModel
from service.redis_link import RedisLink
from service.settings import Settings, get_settings
from tests._service_helpers import item_features

# Variables a developer's shell or CI may have set: each test starts from none of them.
ENV = ("REDIS_URL", "MRDIB_REDIS_URL", "MRDIB_ARTIFACTS", "MRDIB_USER_VECTOR_TTL_S", "MRDIB_ADMIN_TOKEN",
       "MRDIB_ADMIN_TOKEN_FILE", "MRDIB_EVENTS_TOKEN", "MRDIB_EVENTS_TOKEN_FILE", "MRDIB_METRICS_TOKEN",
       "MRDIB_CPU_THREADS", "MRDIB_ORT_INTRA_THREADS", "MRDIB_FAISS_THREADS", "MRDIB_POLL_INTERVAL_S",
       "MRDIB_REDIS_POOL_SIZE", "MRDIB_REDIS_POOL_TIMEOUT_S", "MRDIB_ITEM_WAL_PATH", "MRDIB_WAL_PATH",
       "MRDIB_REDIS_MODE", "MRDIB_STREAM_SHARDS", "MRDIB_STREAM", "MRDIB_REDIS_KEY_PREFIX")


@pytest.fixture()
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_settings_come_from_the_environment(env, tmp_path):
    values = {"REDIS_URL": "redis://redis.example:6390/2", "MRDIB_ARTIFACTS": str(tmp_path / "arts"),
              "MRDIB_USER_VECTOR_TTL_S": "120", "MRDIB_ADMIN_TOKEN": "from-env", "MRDIB_CPU_THREADS": "3",
              "MRDIB_ORT_INTRA_THREADS": "2", "MRDIB_FAISS_THREADS": "5", "MRDIB_POLL_INTERVAL_S": "2.5",
              "MRDIB_REDIS_POOL_SIZE": "9", "MRDIB_REDIS_POOL_TIMEOUT_S": "0.1"}
    for k, v in values.items():
        env.setenv(k, v)
    s = get_settings()
    assert s.redis_url == "redis://redis.example:6390/2"
    assert s.artifacts == tmp_path / "arts"
    assert s.user_vector_ttl_s == 120
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "from-env"
    assert "from-env" not in repr(s)  # a secret: never printed with the settings
    assert (s.cpu_threads, s.ort_intra_threads, s.faiss_threads) == (3, 2, 5)
    assert s.poll_interval_s == 2.5
    assert (s.redis_pool_size, s.redis_pool_timeout_s) == (9, 0.1)
    assert get_settings() is s  # read once per process

    # The app factory without arguments (uvicorn --factory) uses exactly these.
    app = create_app()
    try:
        assert app.state.ctx.settings == s
        assert app.state.ctx.pool._max_workers == 3
    finally:
        app.state.ctx.pool.shutdown()


def test_secrets_from_files_and_never_in_errors(env, tmp_path):
    """Tokens may come from files (Docker/Kubernetes secrets), never need a command line, and a settings error
    does not print the values it got."""
    (tmp_path / "admin").write_text("admin-from-file-0123456789\n")
    (tmp_path / "events").write_text("events-from-file-0123456789")
    env.setenv("MRDIB_ADMIN_TOKEN_FILE", str(tmp_path / "admin"))
    env.setenv("MRDIB_EVENTS_TOKEN_FILE", str(tmp_path / "events"))
    s = Settings()
    assert s.admin_token.get_secret_value() == "admin-from-file-0123456789"  # the trailing newline goes
    assert s.events_token.get_secret_value() == "events-from-file-0123456789" and s.metrics_token is None
    assert set(s.secret_values()) == {"admin-from-file-0123456789", "events-from-file-0123456789"}
    env.setenv("MRDIB_ADMIN_TOKEN", "also-in-the-environment")
    with pytest.raises(ValidationError, match="set MRDIB_ADMIN_TOKEN or MRDIB_ADMIN_TOKEN_FILE, not both") as e:
        Settings()
    assert "also-in-the-environment" not in str(e.value) and "events-from-file" not in str(e.value)
    env.delenv("MRDIB_ADMIN_TOKEN")
    env.setenv("MRDIB_EVENTS_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match="MRDIB_EVENTS_TOKEN_FILE: cannot read"):
        Settings()
    (tmp_path / "empty").write_text("\n")
    env.setenv("MRDIB_EVENTS_TOKEN_FILE", str(tmp_path / "empty"))
    with pytest.raises(ValidationError, match="is empty"):
        Settings()
    env.delenv("MRDIB_EVENTS_TOKEN_FILE")
    env.setenv("MRDIB_EVENTS_TOKEN", "")  # empty = unset, not a token an empty bearer would match
    assert Settings().events_token is None


def test_defaults_and_alias(env):
    s = Settings()
    assert s.redis_url is None and s.admin_token is None  # embedded demo: no Redis, admin routes off
    assert s.events_token is None and s.metrics_token is None and not s.access_log
    assert (s.event_rate_per_s, s.event_burst, s.max_header_bytes) == (10.0, 100, 32 * 1024)
    assert s.item_wal_file == Path("events.wal.items.jsonl")  # beside the event WAL
    env.setenv("MRDIB_REDIS_URL", "redis://127.0.0.1:6379/1")  # the prefixed spelling works too
    assert Settings().redis_url == "redis://127.0.0.1:6379/1"
    env.setenv("REDIS_URL", "redis://127.0.0.1:6379/3")  # the conventional one wins
    assert Settings().redis_url == "redis://127.0.0.1:6379/3"
    env.setenv("MRDIB_ITEM_WAL_PATH", "/var/lib/mrdib/items.jsonl")
    assert Settings().item_wal_file == Path("/var/lib/mrdib/items.jsonl")
    env.setenv("MRDIB_WAL_PATH", "/var/lib/mrdib/items.jsonl")  # one file for both logs: refused, said why
    with pytest.raises(ValidationError, match="item_wal_path must differ from wal_path"):
        Settings()


@pytest.mark.parametrize(("name", "value"), [("MRDIB_CPU_THREADS", "0"), ("MRDIB_FAISS_THREADS", "many"),
                                             ("MRDIB_USER_VECTOR_TTL_S", "-5"), ("MRDIB_POLL_INTERVAL_S", "-1"),
                                             ("MRDIB_REDIS_POOL_SIZE", "0"), ("MRDIB_REDIS_MODE", "sentinel"),
                                             ("MRDIB_STREAM_SHARDS", "0"), ("MRDIB_STREAM", "ev{x}"),
                                             ("MRDIB_REDIS_KEY_PREFIX", "app{1}:")])
def test_a_bad_variable_is_refused_naming_it(env, name, value):
    env.setenv(name, value)
    with pytest.raises(ValidationError) as e:
        Settings()
    assert name.removeprefix("MRDIB_").lower() in str(e.value)


def test_redis_pool_is_bounded_blocking_with_short_timeouts():
    s = Settings(redis_url="redis://127.0.0.1:6379/0", redis_pool_size=7, redis_pool_timeout_s=0.3,
                 redis_socket_timeout_s=0.2, redis_connect_timeout_s=0.15)
    link = RedisLink(s, Metrics())  # builds the client and pool; connects nothing yet
    pool = link.pool
    assert isinstance(pool, BlockingConnectionPool)  # waits for a free connection instead of opening more
    assert pool.max_connections == 7 and pool.timeout == 0.3
    assert pool.connection_kwargs["socket_timeout"] == 0.2
    assert pool.connection_kwargs["socket_connect_timeout"] == 0.15
    assert link.client.connection_pool is pool
    # The defaults are short: a dead Redis costs a request at most about a quarter of a second.
    d = Settings()
    assert max(d.redis_pool_timeout_s, d.redis_socket_timeout_s, d.redis_connect_timeout_s) <= 0.5
    assert d.redis_pool_size >= 1


def test_cluster_mode_builds_a_cluster_client_with_the_same_layout(env):
    """MRDIB_REDIS_MODE=cluster: redis-py's RedisCluster from any node's URL (nothing connected yet), at most
    MRDIB_REDIS_POOL_SIZE connections per node; the key layout is the one of single mode."""
    from redis.asyncio.cluster import RedisCluster

    env.setenv("MRDIB_REDIS_MODE", "cluster")
    env.setenv("REDIS_URL", "redis://10.0.0.7:7000/0")
    env.setenv("MRDIB_STREAM_SHARDS", "64")
    s = Settings()
    link = RedisLink(s, Metrics())
    assert isinstance(link.client, RedisCluster) and link.cluster and link.pool is None
    assert link.client.nodes_manager.startup_nodes.keys() == {"10.0.0.7:7000"}
    assert s.layout.shards == 64 and s.layout == Settings(redis_mode="single", stream_shards=64).layout
    assert link.stream_of("alice") == f"mrdib:events:{{u{s.layout.shard('alice')}}}"


def test_cluster_client_retries_are_bounded_by_the_settings(env):
    """A dead node must cost a request well under a client's timeout: redis-py's own cluster default (10
    retries, backoff up to 1 s each) kept an event request over 10 s in CI's node-kill test."""
    env.setenv("MRDIB_REDIS_MODE", "cluster")
    env.setenv("REDIS_URL", "redis://10.0.0.7:7000/0")
    env.setenv("MRDIB_REDIS_CLUSTER_RETRIES", "2")
    env.setenv("MRDIB_REDIS_CLUSTER_BACKOFF_CAP_S", "0.1")
    link = RedisLink(Settings(), Metrics())
    assert link.client.retry.get_retries() == 2
    assert max(link.client.retry._backoff.compute(n) for n in range(1, 20) for _ in range(20)) <= 0.1
    assert RedisLink(Settings(redis_cluster_retries=0), Metrics()).client.retry.get_retries() == 0


def _fresh_thread_default() -> int:
    """What OpenMP gives a thread nobody configured (OMP_NUM_THREADS or the core count)."""
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(faiss.omp_get_max_threads()))
    t.start()
    t.join()
    return out[0]


def test_faiss_thread_count_is_set_in_every_searching_thread(tmp_path):
    """OpenMP's thread count is per thread: it must be set in each CPU-pool thread and on the event loop."""
    configured = _fresh_thread_default() + 1  # differs from what an unconfigured thread would get
    app = create_app(Settings(artifacts=tmp_path / "none", redis_url=None, wal_path=tmp_path / "e.jsonl",
                              poll_interval_s=0, cpu_threads=2, faiss_threads=configured))
    with TestClient(app) as client:
        ctx = app.state.ctx
        # Both pool threads (the barrier makes the two calls run on two different threads).
        barrier = threading.Barrier(2, timeout=10)

        def in_pool() -> tuple[str, int]:
            barrier.wait()
            return threading.current_thread().name, faiss.omp_get_max_threads()

        got = [f.result(timeout=10) for f in [ctx.pool.submit(in_pool) for _ in range(2)]]
        assert len({name for name, _ in got}) == 2
        assert all(name.startswith("mrdib-cpu") for name, _ in got)
        assert [n for _, n in got] == [configured, configured]
        # The event-loop thread, where small searches run inline (the portal runs the call on the app's loop).
        loop_thread, on_loop = client.portal.call(lambda: (threading.get_ident(), faiss.omp_get_max_threads()))
        assert loop_thread != threading.get_ident()
        assert on_loop == configured


def test_item_changes_run_their_cpu_work_in_the_bounded_pool(tmp_path, build_artifact, monkeypatch):
    """PUT's item tower run and every overlay rebuild use the app's pool (whose threads have the configured
    faiss/ORT thread counts), not asyncio's default pool. Spies record the thread and then do the real work."""
    root = tmp_path / "artifacts"
    build_artifact(root)
    token = "pool-token"
    app = create_app(Settings(artifacts=root, redis_url=None, wal_path=tmp_path / "e.jsonl", poll_interval_s=0,
                              cpu_threads=2, admin_token=token))
    seen: list[tuple[str, str]] = []
    build_overlay = ModelStore._build_overlay

    def spy_overlay(model: ServingModel, changes: ItemChanges) -> Overlay:
        seen.append(("overlay", threading.current_thread().name))
        return build_overlay(model, changes)

    monkeypatch.setattr(ModelStore, "_build_overlay", staticmethod(spy_overlay))
    with TestClient(app) as client:
        tower = app.state.ctx.store.current.item_tower
        embed = tower.embed

        def spy_embed(features: dict[str, np.ndarray]) -> np.ndarray:
            seen.append(("tower", threading.current_thread().name))
            return embed(features)

        monkeypatch.setattr(tower, "embed", spy_embed)
        seen.clear()  # the overlay built while loading the model is not what this test is about
        auth = {"Authorization": f"Bearer {token}"}
        assert client.put("/items/pool-new", json={"features": item_features(3)}, headers=auth).status_code == 200
        assert client.delete("/items/pool-new", headers=auth).status_code == 200
    kinds = [k for k, _ in seen]
    assert kinds.count("tower") >= 1 and kinds.count("overlay") >= 2, seen
    assert all(name.startswith("mrdib-cpu") for _, name in seen), seen
