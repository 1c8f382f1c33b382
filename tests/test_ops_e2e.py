"""End to end, for real, with the commands the containers run: deploy/train-and-publish.sh (compose's
`trainer`: synthetic catalogue -> `mrdib train` FREEDOM+MRdIB -> `mrdib export` -> verify) -> the real
service on a loopback port with Redis -> events, a new item (PUT) and a hidden one (DELETE) through the
API -> `mrdib retrain` (what compose's `retrain` schedules) consumes the events, merges the new item into
the catalogue, trains warm-started from the first model, gates, publishes -> the running service switches
to the new version by itself, which holds the new item (the side index is emptied) and still hides the
deleted one -> a second `mrdib retrain` has nothing to do. Twice: on a single Redis and on a real Redis
Cluster (3 masters, the session's `redis_cluster`).

The first retraining runs the typer app in-process (no second torch import); the rest are the
installed entry point. The Redis stream and key prefix are unique per test and deleted afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")
redis = pytest.importorskip("redis")

from typer.testing import CliRunner  # noqa: E402

from mrdib.artifact import store  # noqa: E402
from mrdib.cli import app  # noqa: E402
from mrdib.redis_keys import KeyLayout, sync_client  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
SWITCH_TIMEOUT_S = 30.0
TOKEN = "e2e-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(params=["single", "cluster"])
def redis_names(request):
    """(url, mode, stream, key prefix): the Redis at REDIS_URL, or the session's real Redis Cluster; the names are
    unique to this test and every key under them is deleted afterwards."""
    mode = request.param
    url = request.getfixturevalue("redis_cluster").url if mode == "cluster" else REDIS_URL
    client = sync_client(url, mode)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip(f"no Redis at {url}")
    tag = uuid.uuid4().hex[:12]
    stream, prefix = f"test-ops-e2e:{tag}:events", f"test-ops-e2e:{tag}:"
    yield url, mode, stream, prefix
    for key in [stream, *client.scan_iter(match=f"{prefix}*", count=1000)]:
        client.delete(key)  # one by one: in a cluster they live in different slots
    client.close()


def _cli(*args: str) -> str:
    """Run one `mrdib` command in-process; fail with its output when the exit status is not 0."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, f"mrdib {' '.join(args)} -> {result.exit_code}\n{result.output}"
    return result.stdout


def _venv_bin() -> Path:
    """The folder of the installed `mrdib` entry point (the scripts call `mrdib` from PATH)."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "mrdib").is_file():
        pytest.skip(f"no `mrdib` entry point next to {sys.executable} (pip install -e .)")
    return bin_dir


def _wait_for_version(http, version: str) -> float:
    """Poll /model until it serves `version`; returns the seconds it took (bounded)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < SWITCH_TIMEOUT_S:
        r = http.get("/model")
        if r.status_code == 200 and r.json()["model_version"] == version:
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"the service still serves {http.get('/model').json()['model_version']}, not {version}")


@pytest.mark.redis
def test_events_retrain_promote_and_hot_switch(tmp_path: Path, redis_names) -> None:
    from service.api import create_app
    from service.settings import Settings
    from tests._service_helpers import ServerThread
    from training.data.load import load_dataset

    url, mode, stream, prefix = redis_names
    data, work, root = tmp_path / "data", tmp_path / "work", tmp_path / "artifacts"
    bin_dir = _venv_bin()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MRDIB_") and k != "REDIS_URL"}
    env = {**base_env, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "MRDIB_ARTIFACTS": str(root),
           "MRDIB_DATASET": str(data), "MRDIB_WORK": str(work), "REDIS_URL": url, "MRDIB_REDIS_MODE": mode,
           "MRDIB_STREAM": stream, "MRDIB_REDIS_KEY_PREFIX": prefix, "MRDIB_DEVICE": "cpu"}  # fmt: skip

    # 1. The first model, exactly as compose's trainer makes it (defaults: FREEDOM + MRdIB), on a test budget.
    r = subprocess.run(["sh", str(REPO / "deploy" / "train-and-publish.sh")], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={
                           **env, "MRDIB_EPOCHS": "3", "MRDIB_EXPORT_ARGS": "--tower-epochs 5",
                           "MRDIB_SYNTH_ARGS": "--users 90 --items 70 --interactions 1800 --seed 5"})  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    v0 = store.current_version(root)
    assert v0 is not None and f"published {v0}" in r.stderr
    m0 = store.verify_artifact(root / v0)
    assert m0.backbone == "freedom" and m0.mrdib is not None and (m0.n_users, m0.n_items) == (90, 70)
    assert not any(work.iterdir())  # the checkpoint was scratch; its weights stay for the warm start:
    assert (root / "retrain" / "checkpoints" / v0 / "model.safetensors").is_file()
    ds = load_dataset(data)

    # 2. The real service, on Redis, following `current` every 0.2 s.
    settings = Settings(artifacts=root, redis_url=url, redis_mode=mode, stream=stream, redis_key_prefix=prefix,
                        poll_interval_s=0.2, wal_path=tmp_path / "wal.jsonl", cpu_threads=2,
                        admin_token=TOKEN)  # fmt: skip
    with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=15) as http:
        assert http.get("/model").json()["model_version"] == v0

        # 3. Events through the API: new (user, item) pairs of known users, a new user, an unknown item.
        train = ds.train_csr()
        known: list[tuple[str, str]] = []
        for u in range(4):
            seen = set(train.indices[train.indptr[u]:train.indptr[u + 1]].tolist()) | set(
                ds.csr(1)[u].indices.tolist()) | set(ds.csr(2)[u].indices.tolist())  # fmt: skip
            fresh = [i for i in range(ds.n_items) if i not in seen][:2]
            known += [(ds.user_ids[u], ds.item_ids[i]) for i in fresh]
        visitor = f"visitor-{uuid.uuid4().hex[:8]}"
        # A new item from its features (the side index) and a hidden catalogue item; events on the new item.
        sku, hidden = f"sku-{uuid.uuid4().hex[:8]}", ds.item_ids[60]
        features = {m: (x[5] + 0.05).tolist() for m, x in ds.features.items()}
        assert http.put(f"/items/{sku}", json={"features": features}, headers=AUTH).status_code == 200
        assert http.delete(f"/items/{hidden}", headers=AUTH).status_code in (200, 204)
        side = http.get("/model").json()
        assert (side["side_index_size"], side["hidden_items"], side["n_items"]) == (1, 1, 70)
        posted = [*known, *[(visitor, ds.item_ids[i]) for i in (3, 11, 29, 47)], (visitor, sku),
                  (ds.user_ids[1], sku), (ds.user_ids[0], "no-such-item")]  # fmt: skip
        for user, item in posted:
            r = http.post("/events", json={"user_id": user, "item_id": item, "type": "click"})
            assert r.status_code == 202 and r.json()["durable_in"] == "redis", r.text

        # 4. The retraining job consumes them, trains, gates and promotes.
        out = _cli("retrain", "--artifacts", str(root), "--base", str(data), "--redis-url", url,
                   "--redis-mode", mode, "--stream", stream, "--key-prefix", prefix, "--epochs", "2",
                   "--tower-epochs", "5", "--device", "cpu", "--tolerance", "1.0", "--json")  # fmt: skip
        report = json.loads(out)
        assert report["status"] == "promoted", report
        assert report["events"] == len(posted)
        assert sum(report["streams"].values()) == len(posted)  # from the users' shard streams
        assert set(report["streams"]) <= set(settings.layout.streams())
        side_report = report["side_items"]
        assert (side_report["added"], side_report["hidden"], side_report["cleared"]) == (1, 1, 1), side_report
        merge = report["merge"]  # the events on the new item are interactions, not unknown items
        assert merge["added"] == len(posted) - 1 and merge["skipped_unknown_item"] == 1 and merge["new_users"] == 1
        assert report["warm_start"]["from_version"] == v0, report["warm_start"]  # from the bootstrap model
        gate = report["gate"]
        assert gate["passed"] and gate["current_version"] == v0 and gate["current"] is not None
        v1 = report["version"]
        assert v1 != v0 and store.current_version(root) == v1
        m1 = store.verify_artifact(root / v1)
        assert m1.n_users == ds.n_users + 1 and m1.quality_gate["passed"] is True and m1.mrdib is not None
        assert m1.n_items == ds.n_items + 1 and store.load_artifact(root / v1).item_ids[-1] == sku
        assert list(m1.side_items_merged or {}) == [sku]  # the service serves newer re-PUTs of it from the side
        assert not sync_client(url, mode).hlen(KeyLayout(prefix).item_keys()[0])  # merged: side index emptied

        # 5. The running service switches by itself, knows the new user and the new item, still hides the other.
        switch_s = _wait_for_version(http, v1)
        print(f"service switched to {v1} {switch_s:.2f}s after promotion")
        rec = http.post("/recommend", json={"user_id": visitor, "k": 5})
        assert rec.status_code == 200 and rec.json()["model_version"] == v1 and rec.json()["source"] != "popular"
        assert len(rec.json()["items"]) == 5
        info = http.get("/model").json()
        assert (info["n_items"], info["side_index_size"], info["hidden_items"]) == (71, 0, 1), info
        assert http.get(f"/items/{sku}/similar", params={"k": 5}).status_code == 200
        everything = http.post("/recommend", json={"user_id": ds.user_ids[2], "k": 71, "exclude_seen": False})
        ids = [x["item_id"] for x in everything.json()["items"]]
        assert sku in ids and hidden not in ids

        # 6. Nothing new: the installed command exits 0 with nothing to do and publishes nothing.
        versions = sorted(p.name for p in root.iterdir() if p.is_dir())
        r = subprocess.run(["mrdib", "retrain"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "nothing-to-do" in r.stdout and "events read: 0" in r.stdout
        assert store.current_version(root) == v1
        assert sorted(p.name for p in root.iterdir() if p.is_dir()) == versions
        assert http.get("/model").json()["model_version"] == v1
