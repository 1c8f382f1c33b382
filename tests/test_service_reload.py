"""Hot reload over real HTTP: admin reload, polling of `current`, refusal of a corrupted version,
and requests in flight during a swap (each response names exactly one version)."""

from __future__ import annotations

import threading
import time

import httpx

from mrdib.artifact.store import load_artifact
from service.api import create_app
from service.settings import Settings
from tests._service_helpers import ServerThread, corrupt, wait_for

TOKEN = "reload-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_reload_poll_and_refusal(tmp_path, build_artifact):
    root = tmp_path / "artifacts"
    v1 = build_artifact(root, seed=1)
    art = load_artifact(root / v1)  # every version is trained on the same catalogue: same ids
    u1, u3 = art.user_ids[1], art.user_ids[3]
    feats = {m.name: [0.1 * (k + 1)] * m.dim for k, m in enumerate(art.manifest.modalities)}
    settings = Settings(artifacts=root, redis_url=None, wal_path=tmp_path / "wal.jsonl", admin_token=TOKEN,
                        poll_interval_s=0.2, cpu_threads=2)
    with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        assert http.get("/model").json()["model_version"] == v1
        http.post("/recommend", json={"user_id": u1})
        assert http.post("/recommend", json={"user_id": u1}).json()["cached"] is True

        # Requests keep flowing while versions are swapped underneath them.
        seen: list[tuple[int, str | None]] = []
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client(base_url=srv.url, timeout=10) as c:
                while not stop.is_set():
                    r = c.post("/recommend", json={"user_id": u3, "k": 5})
                    seen.append((r.status_code, r.json().get("model_version")))

        t = threading.Thread(target=hammer)
        t.start()
        try:
            v2 = build_artifact(root, seed=2)
            r = http.post("/admin/reload", headers=AUTH)
            assert r.status_code == 200 and r.json()["status"] in ("loaded", "unchanged")
            assert r.json()["model_version"] == v2
            # The poller alone picks up the next version.
            v3 = build_artifact(root, seed=3)
            wait_for(lambda: http.get("/model").json()["model_version"] == v3, timeout=10.0, what="poll to load v3",
                     poll=0.05)
        finally:
            stop.set()
            t.join()
        assert seen and all(code == 200 for code, _ in seen)
        assert {v for _, v in seen} <= {v1, v2, v3}
        # Cache keys include the version: the new model recomputes rather than reusing v1's vector.
        assert http.post("/recommend", json={"user_id": u1}).json()["cached"] is False

        # A corrupted version is refused; the old one keeps serving.
        v4 = build_artifact(root, seed=4)
        corrupt(root, v4)
        r = http.post("/admin/reload", headers=AUTH)
        assert r.status_code == 409 and r.json()["status"] == "refused" and r.json()["candidate"] == v4
        assert "checksum mismatch" in r.json()["error"] and r.json()["model_version"] == v3
        time.sleep(0.5)  # several poll periods: the poller must not flip to v4 either
        assert http.get("/model").json()["model_version"] == v3
        assert http.get("/admin/model", headers=AUTH).json()["refused_versions"].keys() == {v4}
        assert "refused_versions" not in http.get("/model").json()  # reasons name files: admin only
        body = http.post("/recommend", json={"user_id": u1, "k": 3}).json()
        assert body["model_version"] == v3 and len(body["items"]) == 3
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["model_version"] == v3
        assert 'mrdib_model_reloads_total{result="refused"}' in http.get("/metrics").text
        assert f'mrdib_model_info{{version="{v3}"}} 1.0' in http.get("/metrics").text

        # Admin changes survive a swap: the side item is re-embedded by the new version's item tower.
        assert http.put("/items/side-1", json={"features": feats}, headers=AUTH).status_code == 200
        assert http.delete(f"/items/{art.item_ids[0]}", headers=AUTH).status_code == 200
        v5 = build_artifact(root, seed=5)
        assert http.post("/admin/reload", headers=AUTH).json()["model_version"] == v5
        ids = [i["item_id"] for i in http.post("/recommend", json={"user_id": u1, "k": 1000}).json()["items"]]
        assert "side-1" in ids and art.item_ids[0] not in ids
