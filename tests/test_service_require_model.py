"""`mrdib serve --require-model` / MRDIB_REQUIRE_MODEL: no valid model at start -> the process exits non-zero
instead of serving 503; and `mrdib serve`'s default artifacts root is the one quickstart.sh publishes into."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.api import create_app
from service.settings import Settings
from tests._service_helpers import ServerThread, corrupt, free_port

REPO = Path(__file__).resolve().parents[1]
SERVE = "import typer; from service.cli import serve; typer.run(serve)"


def _serve(*args: str, tmp_path: Path, env: dict | None = None) -> subprocess.Popen:
    e = {**os.environ, "MRDIB_POLL_INTERVAL_S": "0", "MRDIB_WAL_PATH": str(tmp_path / "w.jsonl"), **(env or {})}
    e.pop("REDIS_URL", None)
    return subprocess.Popen([sys.executable, "-c", SERVE, *args], cwd=REPO, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_nothing_published_exits_2(tmp_path, workers):
    proc = _serve("--artifacts", str(tmp_path / "empty"), "--port", str(free_port()), "--workers", workers,
                  "--require-model", tmp_path=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, out + err
    assert f"error: no model published under {tmp_path / 'empty'}" in err


def test_refused_model_exits_2_with_the_reason(tmp_path, build_artifact):
    root = tmp_path / "artifacts"
    v = build_artifact(root)
    corrupt(root, v)
    for workers in ("1", "2"):
        proc = _serve("--artifacts", str(root), "--port", str(free_port()), "--workers", workers,
                      tmp_path=tmp_path, env={"MRDIB_REQUIRE_MODEL": "true"})  # the setting, not the flag
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, out + err
        assert re.search(rf"error: the model under {re.escape(str(root))} was refused: .*item_vectors.npy: "
                         "checksum mismatch", err), err


def test_a_valid_model_serves(tmp_path, build_artifact):
    root = tmp_path / "artifacts"
    v = build_artifact(root)
    port = free_port()
    proc = _serve("--artifacts", str(root), "--port", str(port), "--require-model", tmp_path=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["model_version"] == v
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_the_setting_stops_a_plain_uvicorn_start(tmp_path):
    """`uvicorn --factory service.api:create_app` with MRDIB_REQUIRE_MODEL: the app's startup fails (uvicorn
    then exits with its startup-failure status); without the setting the same app starts and answers 503."""
    import uvicorn

    settings = dict(artifacts=tmp_path / "none", redis_url=None, wal_path=tmp_path / "w.jsonl", poll_interval_s=0)
    app = create_app(Settings(**settings, require_model=True))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="critical"))
    with pytest.raises(SystemExit) as stopped:
        server.run()
    assert stopped.value.code == 3 and not server.started  # uvicorn's STARTUP_FAILURE
    assert "no model published under" in app.state.ctx.start_error
    with ServerThread(create_app(Settings(**settings))) as srv:
        assert httpx.get(f"{srv.url}/readyz").status_code == 503


def test_default_artifacts_root_is_where_quickstart_publishes():
    """quickstart.sh publishes into $MRDIB_HOME/artifacts, MRDIB_HOME defaulting to mrdib-home/ in the
    repository; `mrdib serve` run from the repository root reads the same folder by default."""
    script = (REPO / "quickstart.sh").read_text(encoding="utf-8")
    home = re.search(r'^HOME_DIR=\$\(absolute "\$\{MRDIB_HOME:-\$PWD/([^}"]+)\}"\)', script, re.M)
    assert home, "quickstart.sh's MRDIB_HOME default moved: update this test and the service default together"
    assert re.search(r'\$MRDIB export .*--out "\$HOME_DIR/artifacts"', script)
    assert Settings.model_fields["artifacts"].default == Path(home.group(1)) / "artifacts"
