"""quickstart.sh, the README's first command, run for real: synth -> train FREEDOM+MRdIB -> export ->
verify -> serve, in a temporary MRDIB_HOME with a tiny catalogue and a two-epoch budget, then the
README tour's main calls against the server it started.

The test reuses the repository's .venv (quickstart.sh installs only when .venv/bin/mrdib is missing,
and this test skips rather than let it install), and always kills the script's whole process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests._service_helpers import free_port

httpx = pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "quickstart.sh"
BUDGET_S = 110.0  # the whole script, from start to a ready server


def _env(home: Path, port: int, **extra: str) -> dict[str, str]:
    """The caller's environment minus anything that would point the service elsewhere (REDIS_URL, MRDIB_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRDIB_") and k != "REDIS_URL"}
    env.update(MRDIB_HOME=str(home), EPOCHS="2", PORT=str(port), HOST="127.0.0.1", DEVICE="cpu",
               SYNTH_ARGS="--users 120 --items 80 --interactions 2400 --seed 3", **extra)  # fmt: skip
    return env


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the script's process group (bash exec'ed into `mrdib serve`), then SIGKILL if needed."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def repo_venv() -> None:
    if not (REPO / ".venv" / "bin" / "mrdib").is_file():
        pytest.skip("no .venv/bin/mrdib in the repository: quickstart.sh would install one (not in a test)")


def test_quickstart_trains_exports_and_serves(tmp_path: Path, repo_venv) -> None:
    port, home = free_port(), tmp_path / "home"  # given relative: taken from the caller's directory
    log = tmp_path / "quickstart.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", str(SCRIPT)], cwd=tmp_path, env=_env(Path("home"), port), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            while True:
                assert proc.poll() is None, f"quickstart.sh exited {proc.returncode}:\n{log.read_text()[-3000:]}"
                assert time.monotonic() - t0 < BUDGET_S, f"not ready after {BUDGET_S}s:\n{log.read_text()[-3000:]}"
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/readyz").status_code == 200:
                        break
                time.sleep(0.5)
            ready_s = time.monotonic() - t0
            text = log.read_text()
            assert "installing into .venv" not in text  # the repository's venv was reused
            assert "training FREEDOM+MRdIB" in text

            version = (home / "artifacts" / "current").read_text().strip()
            assert http.get("/model").json()["model_version"] == version
            manifest = json.loads((home / "artifacts" / version / "manifest.json").read_text())
            assert manifest["backbone"] == "freedom"

            ds_users = (home / "data" / "synth" / "u_id_mapping.csv").read_text().splitlines()[1:]
            ds_items = (home / "data" / "synth" / "i_id_mapping.csv").read_text().splitlines()[1:]
            user, item = ds_users[0].split("\t")[0], ds_items[12].split("\t")[0]
            assert (len(ds_users), len(ds_items)) == (120, 80)  # SYNTH_ARGS reached `mrdib data synth`

            rec = http.post("/recommend", json={"user_id": user, "k": 10})
            assert rec.status_code == 200, rec.text
            body = rec.json()
            assert body["source"] == "user" and len(body["items"]) == 10 and body["model_version"] == version
            scores = [x["score"] for x in body["items"]]
            assert scores == sorted(scores, reverse=True)

            sim = http.get(f"/items/{item}/similar", params={"k": 5})
            assert sim.status_code == 200, sim.text
            ids = [x["item_id"] for x in sim.json()["items"]]
            assert len(ids) == 5 and item not in ids and all(i.startswith("item") for i in ids)
            print(f"quickstart ready in {ready_s:.1f}s")
    finally:
        _stop(proc)
    assert proc.returncode is not None

