"""Test support for the service: a real trained artifact, a real uvicorn server, a private Redis.

The artifact is what production serves, made the way production makes it, once per test session
(`TrainedArtifacts.train`, behind the session fixtures `trained_artifacts` / `build_artifact` of
tests/conftest.py): a small synthetic catalogue from the project's generator (training.data.synth, what
`mrdib data synth` writes), FREEDOM + MRdIB trained for a few epochs by the real trainer
(training.trainer.train, what `mrdib train` runs), exported by the real exporter (training.export.run_export,
what `mrdib export` runs: fitted ONNX towers, FAISS indexes, published through mrdib.artifact.store). That
takes a few seconds of CPU, so each test then gets *copies* of it published under its own root with fresh
version ids (`TrainedArtifacts.publish`), which tests may corrupt or delete at will.

Two models are trained (same data, different training seeds), so tests that swap versions can tell them
apart by their answers, not only by their version ids: `publish(root, seed=s)` serves model `s % 2`.

Nothing about the artifact is planted: tests read what they assert from the artifact itself
(`mrdib.artifact.store.load_artifact`: ids, vectors, popularity, training histories) and check answers
against exact search over its vectors (`assert_topk`) and its own ONNX user tower run directly in
onnxruntime (`user_tower_vector`). The few facts fixed by the configuration below (sizes, modality dims,
component names) are checked against the exported manifest when it is built.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mrdib.artifact import schema as S
from mrdib.artifact.store import LoadedArtifact, load_artifact, publish, read_manifest, staging_dir

# The synthetic catalogue (training.data.synth.SynthConfig fields). 200 items and 60 users keep training at
# a fraction of a second while leaving every test enough users, items and history to work with; the
# modality dims are the ones the tests' feature bodies use.
N_USERS, N_ITEMS = 60, 200
MODALITIES = {"text": 8, "image": 6}
SYNTH: dict[str, Any] = dict(
    name="service_tests", seed=5, n_users=N_USERS, n_items=N_ITEMS, n_interactions=1800,
    modalities=list(MODALITIES), dims=list(MODALITIES.values()),
    n_redundant=2, n_unique=2, n_synergy=1, n_noise=1,
)
# FREEDOM + MRdIB, small and short: what the issue asks the service to serve, at test size.
TRAIN: dict[str, Any] = {
    "device": "cpu", "threads": 1, "epochs": 5, "patience": 50, "batch_size": 256, "lr": 0.01, "topk": [10, 20],
    "backbone.name": "freedom", "backbone.embedding_dim": 16,
    "mrdib.enabled": True, "mrdib.hidden_dim": 16, "mrdib.shared_dim": 8, "mrdib.unique_dim": 8,
    "mrdib.synergy_dim": 8, "mrdib.latent_dim": 16, "mrdib.club_hidden_dim": 16,
}
MODEL_SEEDS = (1, 2)  # training seeds of the two models; publish(seed=s) serves MODEL_SEEDS[s % 2]'s model
MAX_HISTORY = 20
TOWER_EPOCHS = 10
# What MRdIB exports for these modalities (the dataset orders modalities by name), checked at build time.
COMPONENTS = ["collaborative", "shared", "unique:image", "unique:text", "synergy"]


@dataclass(frozen=True)
class TrainedArtifacts:
    """The session's trained + exported models; `publish` copies one of them under a test's root."""

    data: Path
    versions: tuple[Path, ...]  # one exported version directory per model (MODEL_SEEDS order)

    @classmethod
    def train(cls, workdir: Path) -> TrainedArtifacts:
        """Synthesize the catalogue, train each model and export it, all under `workdir` (a few seconds)."""
        import torch

        from training.config import load_config
        from training.data.synth import SynthConfig, generate_synthetic
        from training.experiment import resolve_dataset
        from training.export import ExportOptions, run_export
        from training.trainer import train

        workdir = Path(workdir)
        data = generate_synthetic(SynthConfig(**SYNTH), workdir / "data")  # with display fields (title, category)
        dataset = resolve_dataset(str(data))  # exactly as `mrdib train --data DIR` reads it
        threads = torch.get_num_threads()
        versions = []
        try:
            for seed in MODEL_SEEDS:
                cfg = load_config(None, {**TRAIN, "data": str(data), "seed": seed})
                ckpt = workdir / f"checkpoint-{seed}"
                train(cfg, dataset, ckpt, progress=False, curves=False)
                res = run_export(ExportOptions(checkpoint=ckpt, out=workdir / "exported", keep=len(MODEL_SEEDS),
                                               max_history=MAX_HISTORY, tower_epochs=TOWER_EPOCHS, seed=seed))
                versions.append(res.path)
        finally:
            torch.set_num_threads(threads)  # the trainer set one thread for the whole process
        out = cls(data=data, versions=tuple(versions))
        out._check()
        return out

    def _check(self) -> None:
        """The facts the tests take from this module's configuration hold for what was really exported."""
        arts = [load_artifact(v) for v in self.versions]
        for a in arts:
            m = a.manifest
            assert (m.n_users, m.n_items, m.max_history) == (N_USERS, N_ITEMS, MAX_HISTORY), m
            assert {s.name: s.dim for s in m.modalities} == MODALITIES, m.modalities
            assert m.backbone == "freedom" and m.mrdib is not None and m.components == COMPONENTS, m.components
            assert a.item_ids == arts[0].item_ids and a.user_ids == arts[0].user_ids
            assert m.item_meta_fields and "title" in m.item_meta_fields and a.item_meta is not None
        # The models must differ, or tests that swap versions could not tell a mixed-up answer.
        assert not np.allclose(arts[0].user_vectors, arts[1].user_vectors, atol=1e-2)

    def publish(self, root: Path, *, seed: int = 0) -> str:
        """Publish a copy of model `seed % 2` under `root` as a new version (becomes `current`); its id.

        A copy (not a link): tests corrupt, truncate and delete files of what they publish."""
        src = self.versions[seed % len(self.versions)]
        manifest = read_manifest(src)
        st = staging_dir(root)
        for p in src.iterdir():
            if p.is_file() and p.name != S.MANIFEST:
                shutil.copyfile(p, st / p.name)
        fields = manifest.model_dump(exclude={"files", "schema_version", "model_version"})
        fields["created_at"] = datetime.now(UTC)
        return publish(st, fields, root).model_version


def user_tower_vector(art: LoadedArtifact, rows: Sequence[int]) -> np.ndarray:
    """The artifact's own ONNX user tower on one history (item rows, most recent first, capped at max_history),
    run directly in onnxruntime: the reference for every history-based answer of the service."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(art.file(S.USER_TOWER)), providers=["CPUExecutionProvider"])
    hist = np.asarray(list(rows)[: art.manifest.max_history], dtype=np.int64)[None, :]
    return np.asarray(sess.run(None, {"history": hist})[0][0], dtype=np.float32)


def exact_topk(art: LoadedArtifact, vector: np.ndarray, banned: Sequence[int] | np.ndarray, k: int) -> list[str]:
    """Ids of the exact top-k of `vector` by inner product over the artifact's items minus `banned` rows."""
    return [it["item_id"] for it in exact_answer(art, vector, banned, k)]


def exact_answer(art: LoadedArtifact, vector: np.ndarray, banned: Sequence[int] | np.ndarray,
                 k: int) -> list[dict[str, Any]]:
    """The exact top-k as the service would send it: [{item_id, score}], best first."""
    scores = art.item_vectors @ vector
    scores[np.asarray(list(banned), dtype=np.int64)] = -np.inf
    order = np.argsort(-scores, kind="stable")[: min(k, int(np.isfinite(scores).sum()))]
    return [{"item_id": art.item_ids[r], "score": float(scores[r])} for r in order]


def topk_mismatch(items: Sequence[Mapping[str, Any]], art: LoadedArtifact, vector: np.ndarray,
                  banned: Sequence[int] | np.ndarray, k: int, rel_tol: float = 1e-4) -> str | None:
    """Why `items` (a service answer: item_id + score) is not the exact top-k of `vector` over the artifact's
    items minus `banned` rows; None when it is.

    Checked: as many items as the exact top-k has, distinct and none banned; each score is the item's exact
    inner product with `vector`; descending order; and the scores are, position by position, the exact top-k
    scores (so nothing left out beats anything returned). Items whose scores tie within `rel_tol` x the
    largest |score| may come in either order (the service's vector comes from its own onnxruntime session)."""
    scores = art.item_vectors @ vector
    allowed = np.ones(len(scores), dtype=bool)
    allowed[np.asarray(list(banned), dtype=np.int64)] = False
    want = np.sort(scores[allowed])[::-1][:k]
    tol = rel_tol * max(1.0, float(np.abs(scores).max()))
    row_of = {i: r for r, i in enumerate(art.item_ids)}
    ids = [str(it["item_id"]) for it in items]
    got = np.array([float(it["score"]) for it in items])
    if len(ids) != len(want):
        return f"{len(ids)} items, expected {len(want)}"
    if len(set(ids)) != len(ids):
        return f"duplicate ids in {ids}"
    if any(i not in row_of for i in ids):
        return f"ids not in the catalogue: {[i for i in ids if i not in row_of]}"
    rows = np.array([row_of[i] for i in ids], dtype=np.int64)
    if not allowed[rows].all():
        return f"excluded items returned: {[i for i, ok in zip(ids, allowed[rows], strict=True) if not ok]}"
    if not np.allclose(got, scores[rows], rtol=0, atol=tol):
        return f"scores {got.round(5).tolist()} are not the exact {scores[rows].round(5).tolist()}"
    if (np.diff(got) > tol).any():
        return f"not in descending order: {got.round(5).tolist()}"
    if not np.allclose(scores[rows], want, rtol=0, atol=tol):
        return f"not the top {k}: scores {scores[rows].round(5).tolist()}, best are {want.round(5).tolist()}"
    return None


def assert_topk(items: Sequence[Mapping[str, Any]], art: LoadedArtifact, vector: np.ndarray,
                banned: Sequence[int] | np.ndarray, k: int) -> None:
    """Assert that `items` is the exact top-k (see `topk_mismatch`)."""
    why = topk_mismatch(items, art, vector, banned, k)
    assert why is None, f"{why}; got {[it['item_id'] for it in items]}, exact {exact_topk(art, vector, banned, k)}"


def cosine_similarities(art: LoadedArtifact, row: int) -> np.ndarray:
    """Cosine of every item vector to item `row`'s, with -inf for the item itself (never its own neighbour)."""
    x = art.item_vectors / np.linalg.norm(art.item_vectors, axis=1, keepdims=True)
    sims = x @ x[row]
    sims[row] = -np.inf
    return sims


def cosine_neighbours(art: LoadedArtifact, row: int, k: int) -> tuple[list[str], np.ndarray]:
    """Exact k nearest items to item `row` by cosine of item vectors, itself excluded: (ids, cosines)."""
    sims = cosine_similarities(art, row)
    order = np.argsort(-sims, kind="stable")[:k]
    return [art.item_ids[r] for r in order], sims[order]


def item_features(seed: int) -> dict[str, list[float]]:
    """Random features of one item for PUT /items, one list per modality of the trained artifact."""
    rng = np.random.default_rng(seed)
    return {m: rng.normal(size=dm).round(4).tolist() for m, dm in MODALITIES.items()}


def corrupt(root: Path, version: str, name: str = S.ITEM_VECTORS) -> None:
    """Flip bytes at the end of one file of a published version (checksum no longer matches)."""
    p = Path(root) / version / name
    data = bytearray(p.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])
    p.write_bytes(bytes(data))


def free_port() -> int:
    """A loopback port nobody listens on (bound once by us, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_sum(text: str, name: str, label: str) -> float:
    """Sum of the samples of `name` whose labels contain `label`, in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


class ServerThread:
    """A real uvicorn server on a free loopback port, in a thread of this process, run with the options
    `mrdib serve` uses (service.server.uvicorn_options: the header limit...)."""

    def __init__(self, app):
        import uvicorn

        from service.server import uvicorn_options

        self.port = free_port()
        options = uvicorn_options(app.state.ctx.settings)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on", **options))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def redis_available(url: str = "redis://127.0.0.1:6379/0") -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.3).ping())
    except Exception:
        return False


class PrivateRedis:
    """A redis-server of our own on a free port in a temp dir, which tests may stop and restart."""

    appendfsync = "always"  # every acknowledged write on disk before the reply

    def __init__(self):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mrdib-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not installed")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes", "--appendfsync", self.appendfsync],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_available(self.url):
            if time.monotonic() > deadline:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateCluster:
    """A real Redis Cluster of our own: `masters` redis-server processes with ``--cluster-enabled yes`` on free
    loopback ports, joined by ``redis-cli --cluster create ... --cluster-replicas 0``. Each node keeps its AOF and
    nodes.conf in its own folder, so `stop`/`kill` then `start` brings the same node (id, slots, data) back.

    `node_timeout_ms` is short (the default 15 s would keep a test waiting that long before the cluster notices
    a dead node)."""

    def __init__(self, masters: int = 3, node_timeout_ms: int = 1000, appendfsync: str = "everysec"):
        self.ports = [self._node_port() for _ in range(masters)]
        self.dir = Path(tempfile.mkdtemp(prefix="mrdib-cluster-"))
        self.node_timeout_ms = node_timeout_ms
        self.appendfsync = appendfsync
        self.procs: dict[int, subprocess.Popen] = {}

    @staticmethod
    def _node_port() -> int:
        """A free port whose cluster-bus port (+10000) is free too, and below 65536."""
        for _ in range(200):
            p = free_port()
            if p + 10000 > 65535:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p + 10000))
                except OSError:
                    continue
            return p
        raise RuntimeError("no free port pair for a cluster node")

    @property
    def url(self) -> str:
        """Any one node: the client discovers the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, port: int | None = None) -> None:
        """Start every node (first time: and create the cluster), or the node on `port` again."""
        exe = shutil.which("redis-server")
        if exe is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server / redis-cli not installed")
        for p in [port] if port is not None else self.ports:
            d = self.dir / str(p)
            d.mkdir(exist_ok=True)
            self.procs[p] = subprocess.Popen(
                [exe, "--port", str(p), "--bind", "127.0.0.1", "--dir", str(d), "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
                 "--save", "", "--appendonly", "yes", "--appendfsync", self.appendfsync],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while not redis_available(f"redis://127.0.0.1:{p}/0"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster node on port {p} did not start")
                time.sleep(0.05)
        if port is None and not (self.dir / str(self.ports[0]) / "created").exists():
            r = subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                                "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {r.stdout[-1000:]} {r.stderr[-1000:]}")
            (self.dir / str(self.ports[0]) / "created").touch()
        self.wait_ok()

    def state(self, port: int) -> str:
        import redis

        try:
            info = redis.Redis(port=port, socket_connect_timeout=0.3, socket_timeout=1).cluster("info")
        except Exception:
            return "down"
        return info.get("cluster_state", "?") if isinstance(info, dict) else "?"

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every node says cluster_state:ok (slots assigned and every master reachable)."""
        deadline = time.monotonic() + timeout
        while any(self.state(p) != "ok" for p in self.ports):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok: { {p: self.state(p) for p in self.ports} }")
            time.sleep(0.1)

    def kill(self, port: int) -> None:
        """SIGKILL one node: no shutdown, no final AOF rewrite (what it acknowledged is in its AOF already)."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait()

    def client(self):
        import redis

        return redis.RedisCluster.from_url(self.url)

    def close(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for(pred, timeout: float = 5.0, what: str = "condition", poll: float = 0.02) -> None:
    """Poll `pred` until true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")
