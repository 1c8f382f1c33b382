"""The install steps of quickstart.sh and .ci/run: torch from the CPU index (deploy/install-torch.sh), and the
system packages of .ci/lib.sh when the user is not root (sudo -n, or a clear message).

The functions of .ci/lib.sh run for real in bash, on a PATH made for each test: stand-ins only for what
cannot be had here -- a non-root `id` (the tests run as root), a password-less `sudo`, and an `apt-get`
that is never to be called -- while Redis itself is the real redis-server."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests._service_helpers import free_port

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / ".ci" / "lib.sh"
INSTALL_TORCH = REPO / "deploy" / "install-torch.sh"


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


# ---------------------------------------------------------------------------------------------- torch


def test_quickstart_and_ci_install_torch_through_the_helper() -> None:
    for script in (REPO / "quickstart.sh", REPO / ".ci" / "run"):
        text = script.read_text()
        assert "deploy/install-torch.sh" in text, script
        assert not re.search(r"pip install[^\n]*torch==", text), f"{script} installs torch from the default index"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "--index-url https://download.pytorch.org/whl/cpu --retries 0 --timeout 15 torch==2.13.0"),
        ({"TORCH_INDEX_URL": "https://mirror.example/whl/cu128", "TORCH_PIP_RETRIES": "3", "TORCH_VERSION": "2.9.1"},
         "--index-url https://mirror.example/whl/cu128 --retries 3 --timeout 15 torch==2.9.1"),
        ({"TORCH_INDEX_URL": ""}, "torch==2.13.0"),  # pip's own configuration only
    ],
)  # fmt: skip
def test_install_torch_command(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    """The pip command line the helper runs (a recording stand-in for python: a real install takes ~20 s and
    is checked by hand, see the report of this change)."""
    fake = tmp_path / "python"
    _script(fake, 'printf "%s\\n" "$*" > "$CALLS"\n')
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_")}
    r = subprocess.run(["sh", str(INSTALL_TORCH), str(fake)], env={**clean, **env, "CALLS": str(tmp_path / "c")},
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "c").read_text().strip() == f"-m pip install -q {expected}"


# ---------------------------------------------------------------------------------------------- .ci/lib.sh


@pytest.fixture
def sandbox(tmp_path: Path):
    """A PATH with only what .ci/lib.sh needs; `id -u` says 1000 (not root); no sudo, redis-server, docker."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "python", f'exec "{sys.executable}" "$@"\n')
    _script(bin_dir / "id", 'if [ "$1" = -u ]; then echo 1000; else echo "uid=1000(ci)"; fi\n')
    _script(bin_dir / "apt-get", 'echo "apt-get $*" >> "$CALLS"; echo "apt-get as non-root" >&2; exit 100\n')
    for tool in ("mktemp", "seq", "sleep", "true", "ln"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "CALLS": str(tmp_path / "calls"),
           "FAKEBIN": str(bin_dir)}  # fmt: skip
    return bin_dir, env


def _lib(env: dict[str, str], call: str) -> subprocess.CompletedProcess:
    """Run `call` in bash after sourcing .ci/lib.sh, under .ci/run's own shell options."""
    return subprocess.run(["/bin/bash", "-c", f'set -euo pipefail; . "{LIB}"; {call}'], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_ensure_redis_with_one_running_does_nothing(sandbox) -> None:
    redis = pytest.importorskip("redis")
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url).ping()
    except redis.exceptions.ConnectionError:
        pytest.skip(f"no Redis at {url}")
    _, env = sandbox
    r = _lib(env, f'ensure_redis "{url}"')
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert not Path(env["CALLS"]).exists()


def test_ensure_redis_not_root_without_sudo_fails_clearly(sandbox) -> None:
    _, env = sandbox
    r = _lib(env, f'ensure_redis "redis://127.0.0.1:{free_port()}/0"')
    assert r.returncode == 1
    assert "redis-server is not installed" in r.stderr and "needs root" in r.stderr and "sudo" in r.stderr
    assert not Path(env["CALLS"]).exists()  # apt-get never attempted


def test_ensure_redis_elsewhere_is_not_started_here(sandbox) -> None:
    _, env = sandbox
    r = _lib(env, "ensure_redis redis://redis.invalid:6379/0")
    assert r.returncode == 1 and "not on this machine" in r.stderr


def test_ensure_redis_not_root_installs_through_sudo_and_starts_it(sandbox) -> None:
    """With password-less sudo: apt-get runs through `sudo -n`, then a real redis-server is started on the URL's
    port (the stand-in sudo "installs" by linking the machine's redis-server into PATH)."""
    redis = pytest.importorskip("redis")
    if not shutil.which("redis-server"):
        pytest.skip("no redis-server on this machine")
    bin_dir, env = sandbox
    _script(bin_dir / "sudo", f"""echo "sudo $*" >> "$CALLS"
[ "$1" = -n ] && shift
case "$*" in
  *"apt-get install"*redis-server*) ln -sf "{shutil.which("redis-server")}" "$FAKEBIN/redis-server" ;;
  *apt-get*) ;;
  *) exec "$@" ;;
esac
""")
    port = free_port()
    try:
        r = _lib(env, f'ensure_redis "redis://127.0.0.1:{port}/0"')
        assert r.returncode == 0, r.stderr
        assert redis.Redis(port=port).ping()
    finally:
        with contextlib.suppress(redis.exceptions.ConnectionError):
            redis.Redis(port=port).shutdown(nosave=True)
    calls = Path(env["CALLS"]).read_text().splitlines()
    assert "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update -qq" in calls
    assert any(c.startswith("sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install") and c.endswith(
        "redis-server") for c in calls)  # fmt: skip
    assert not any(c.startswith("apt-get") for c in calls)  # never unprivileged


def test_ensure_redis_tools_present_does_nothing(sandbox) -> None:
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        pytest.skip("no redis-server / redis-cli on this machine")
    bin_dir, env = sandbox
    for tool in ("redis-server", "redis-cli"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    r = _lib(env, "ensure_redis_tools")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert not Path(env["CALLS"]).exists()


def test_ensure_redis_tools_missing_not_root_fails_clearly(sandbox) -> None:
    """A Redis may answer (REDIS_URL) while redis-server/redis-cli are absent: the cluster tests would then be
    untestable, so CI stops and says why instead of letting them skip."""
    _, env = sandbox
    r = _lib(env, "ensure_redis_tools")
    assert r.returncode == 1
    assert "Redis Cluster tests need them" in r.stderr and "needs root" in r.stderr
    assert not Path(env["CALLS"]).exists()


def test_ensure_compose_not_root_skips_with_a_message(sandbox) -> None:
    _, env = sandbox
    r = _lib(env, "ensure_compose")
    assert r.returncode == 0  # never fatal: the compose test skips
    assert "needs root" in r.stderr and "the compose test will skip" in r.stderr
    assert not Path(env["CALLS"]).exists()


def test_ensure_chromium_not_root_says_why_without_failing(sandbox) -> None:
    _, env = sandbox
    r = _lib(env, "ensure_chromium")
    assert r.returncode == 0  # never fatal: the browser test fails under CI=true, skips elsewhere
    assert "needs root" in r.stderr and "browser test cannot run" in r.stderr
    assert not Path(env["CALLS"]).exists()


def test_ensure_chromium_installs_debians_package_through_sudo(sandbox) -> None:
    bin_dir, env = sandbox
    _script(bin_dir / "sudo", """echo "sudo $*" >> "$CALLS"
case "$*" in
  *"apt-get install"*chromium*) printf '#!/bin/sh\n' > "$FAKEBIN/chromium"; chmod +x "$FAKEBIN/chromium" ;;
esac
""")
    for tool in ("printf", "chmod"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    r = _lib(env, "ensure_chromium && command -v chromium")
    assert r.returncode == 0 and r.stdout.strip() == str(bin_dir / "chromium"), r.stderr
    calls = Path(env["CALLS"]).read_text().splitlines()
    assert any(c.startswith("sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install") and c.endswith(" chromium")
               for c in calls), calls
    assert _lib(env, "ensure_chromium").returncode == 0 and len(Path(env["CALLS"]).read_text().splitlines()) == len(
        calls)  # installed: nothing more is run


def test_ci_run_uses_the_library() -> None:
    text = (REPO / ".ci" / "run").read_text()
    assert ". .ci/lib.sh" in text and 'ensure_redis "$REDIS_URL"' in text and "ensure_compose" in text
    assert "ensure_chromium" in text
    assert "ensure_redis_tools" in text and "export MRDIB_REQUIRE_REDIS_CLUSTER=1" in text
    assert not re.search(r"^\s*apt-get ", text, re.M), "apt-get only through .ci/lib.sh (root or sudo -n)"
    r = subprocess.run(["bash", "-n", str(REPO / ".ci" / "run")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
