"""The GC freeze after each model load (service/heap.py): survivors frozen, an old version still freed."""

from __future__ import annotations

import gc
import weakref

from fastapi.testclient import TestClient

from mrdib.artifact.store import load_artifact
from service import heap
from service.api import create_app
from service.settings import Settings

TOKEN = "heap-token"


def test_load_freezes_heap_and_swap_releases_old_version(tmp_path, build_artifact):
    root = tmp_path / "artifacts"
    first = build_artifact(root, seed=0)
    settings = Settings(artifacts=root, redis_url=None, wal_path=tmp_path / "events.jsonl", admin_token=TOKEN,
                        poll_interval_s=0)
    gc.unfreeze()
    try:
        with TestClient(create_app(settings)) as client:
            store = client.app.state.ctx.store
            assert store.current.version == first
            assert gc.get_freeze_count() > 1000  # the imported modules and the model's bookkeeping
            old = weakref.ref(store.current)
            # A reference cycle that holds the served model and is frozen with it (libraries build such
            # cycles); it becomes garbage while frozen, which only an unfreeze lets the collector see.
            cycle: list = [store.current]
            cycle.append(cycle)
            keep = [cycle]
            heap.settle()
            del cycle
            keep.clear()

            second = build_artifact(root, seed=1)
            r = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.json()["status"] == "loaded" and store.current.version == second
            # Gone at once, without waiting for a later full collection: the swap unfroze and collected.
            assert old() is None
            body = client.post("/recommend", json={"user_id": load_artifact(root / second).user_ids[1], "k": 3}).json()
            assert body["model_version"] == second and body["source"] == "user"
    finally:
        gc.unfreeze()
