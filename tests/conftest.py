"""Fixtures shared by the whole suite: where the shared data lives, a Redis URL, torch thread limits, and the
service tests' trained artifact."""

from __future__ import annotations

import os

# Two cores shared by everything: BLAS thread pools fighting over them make small tests 30x slower.
# Must be set before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """../shared/data beside the checkout (present on the project's machines, absent elsewhere)."""
    env = os.environ.get("MRDIB_SHARED_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("shared data (../shared/data) not available on this machine")
    return d


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread; more only fight over the two shared cores."""
    torch = sys.modules.get("torch")  # never import torch here: service tests must run without it
    if torch is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def trained_artifacts(tmp_path_factory: pytest.TempPathFactory):
    """The service tests' real artifact: synthetic catalogue -> FREEDOM + MRdIB -> export, once per session.

    Lazy (only sessions that run a service or fault test pay its few seconds) and session-scoped (every such
    test shares it; tests get published copies). See tests/_service_helpers.py for what is trained."""
    pytest.importorskip("torch", reason="the service tests train their artifact: install the [train] extra")
    from tests._service_helpers import TrainedArtifacts

    return TrainedArtifacts.train(tmp_path_factory.mktemp("trained-artifacts"))


@pytest.fixture(scope="session")
def build_artifact(trained_artifacts) -> Callable[..., str]:
    """`build_artifact(root, seed=0) -> version`: publish a copy of the trained artifact under `root`.

    A factory fixture so that tests can publish several versions mid-test (reload tests); `seed` picks one of
    the two trained models (`seed % 2`), so consecutive seeds give versions that answer differently."""
    return trained_artifacts.publish


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[object]:
    """A real 3-master Redis Cluster on free loopback ports (tests._service_helpers.PrivateCluster), started once per
    session. Without redis-server/redis-cli the tests using it skip, unless MRDIB_REQUIRE_REDIS_CLUSTER=1 (set by
    .ci/run, which installs them): then they fail, so that CI never passes with the cluster untested."""
    import shutil

    from tests._service_helpers import PrivateCluster

    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        msg = "redis-server / redis-cli not installed: no Redis Cluster"
        if os.environ.get("MRDIB_REQUIRE_REDIS_CLUSTER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    cluster = PrivateCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
