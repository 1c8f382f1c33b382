"""The service never imports torch, and `mrdib serve` hands its flags to uvicorn through the settings."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from typer.testing import CliRunner

import service.metrics  # noqa: F401 - prometheus_client picks its value storage at import: import it while
from mrdib.artifact.store import load_artifact  # PROMETHEUS_MULTIPROC_DIR is unset, as in a serving supervisor

REPO = Path(__file__).resolve().parents[1]


def test_service_runs_with_torch_blocked(tmp_path, build_artifact):
    root = tmp_path / "artifacts"
    art = load_artifact(root / build_artifact(root))
    user, item = art.user_ids[1], art.item_ids[1]  # known to the trained artifact: every path really runs
    feats = {m.name: [0.0] * m.dim for m in art.manifest.modalities}
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        from fastapi.testclient import TestClient
        from service.api import create_app
        from service.cli import serve
        from service.settings import Settings
        s = Settings(artifacts={str(root)!r}, redis_url=None, wal_path={str(tmp_path / "w.jsonl")!r},
                     admin_token="t", poll_interval_s=0)
        with TestClient(create_app(s)) as c:
            r = c.post("/recommend", json={{"user_id": {user!r}, "explain": True}})
            assert r.status_code == 200 and r.json()["source"] == "user" and "explain" in r.json()["items"][0]
            assert c.post("/recommend", json={{"history": [{item!r}]}}).json()["source"] == "history"
            assert c.put("/items/n", json={{"features": {feats!r}}},
                         headers={{"Authorization": "Bearer t"}}).status_code == 200
            ev = {{"user_id": {user!r}, "item_id": {item!r}, "type": "view"}}
            assert c.post("/events", json=ev).status_code == 202
        assert "torch" not in {{m.split(".")[0] for m, v in sys.modules.items() if v is not None}}
        print("OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stderr[-2000:]


def test_serve_flags_override_environment(monkeypatch, tmp_path):
    import uvicorn

    from service.cli import serve

    calls = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(app=app, **kw))
    monkeypatch.setenv("MRDIB_ARTIFACTS", "/somewhere/else")
    # --workers 2 sets up the shared metrics folder in this process's environment (for the workers it spawns):
    # through monkeypatch, so that it is undone after the test; a stale file of an earlier run is removed.
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_123.db").write_bytes(b"stale")
    (metrics_dir / "README").write_text("not ours")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    import typer

    cli = typer.Typer()
    cli.command()(serve)
    res = CliRunner().invoke(cli, ["--artifacts", str(tmp_path), "--port", "8123", "--host", "0.0.0.0",
                                   "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert calls["app"] == "service.api:create_app" and calls["factory"] is True
    assert (calls["port"], calls["host"], calls["workers"]) == (8123, "0.0.0.0", 2)
    import os

    assert os.environ["MRDIB_ARTIFACTS"] == str(tmp_path.resolve())
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(metrics_dir)
    assert [f.name for f in metrics_dir.iterdir()] == ["README"]  # the stale metric file went, nothing else
    bad = CliRunner().invoke(cli, ["--port", "0"])
    assert bad.exit_code == 2


def test_every_log_line_of_mrdib_serve_is_json(tmp_path):
    """uvicorn's own lines (startup, shutdown) included: `mrdib serve` hands uvicorn a JSON log config."""
    import json
    import os
    import signal
    import time

    import httpx

    from tests._service_helpers import free_port

    port = free_port()
    code = "import typer; from service.cli import serve; typer.run(serve)"
    env = {**os.environ, "MRDIB_POLL_INTERVAL_S": "0", "MRDIB_WAL_PATH": str(tmp_path / "w.jsonl")}
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen([sys.executable, "-c", code, "--artifacts", str(tmp_path / "empty"), "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    lines = [ln for ln in (out + err).splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # raises on any plain-text line
    events = " ".join(str(r.get("event")) for r in records)
    assert "Started server process" in events and "Application startup complete" in events
    assert "no_model" in events and "artifacts_root_missing" in events  # our own structlog lines, same stream
    assert all("level" in r and "timestamp" in r for r in records)
