"""End to end: `mrdib export` publishes a verifiable artifact; the reader refuses anything else.

One export (through the real CLI) is shared by the module; destructive tests work on copies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _export_helpers import DIM, N_ITEMS, N_USERS, rewrite_manifest, write_tiny_checkpoint, write_tiny_mmrec
from typer.testing import CliRunner

from mrdib.artifact import schema as S
from mrdib.artifact import store
from mrdib.artifact.schema import ArtifactError
from mrdib.cli import app
from training.data.mmrec import load_mmrec

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    data = write_tiny_mmrec(root / "data")
    c = write_tiny_checkpoint(root / "ckpt", data)
    out = root / "artifacts"
    r = runner.invoke(app, ["export", "--checkpoint", str(c), "--out", str(out), "--tower-epochs", "20",
                            "--max-history", "20"])
    assert r.exit_code == 0, r.output
    return {"data": data, "ckpt": c, "out": out, "version": out / store.current_version(out), "output": r.output}


def _copy_version(exported: dict[str, Path], tmp_path: Path) -> Path:
    v = exported["version"]
    dst = tmp_path / v.name
    shutil.copytree(v, dst)
    return dst


def _reseal(version_dir: Path, name: str) -> None:
    """Update one file's checksum in the manifest (so that a later check, not the checksum, must catch it)."""
    p = version_dir / S.MANIFEST
    m = json.loads(p.read_text(encoding="utf-8"))
    f = version_dir / name
    m["files"][name] = {"sha256": store.sha256_file(f), "bytes": f.stat().st_size}
    p.write_text(json.dumps(m), encoding="utf-8")


def test_export_prints_version_and_recall(exported: dict[str, Path]) -> None:
    out = exported["output"]
    assert f"published {exported['version'].name}" in out
    assert "user_tower_test_recall@20" in out and "item_tower_holdout_cosine" in out
    assert "ip: Flat recall@20 vs exact = 1.0000" in out


def test_artifact_contents_agree_with_checkpoint_and_data(exported: dict[str, Path]) -> None:
    from training import checkpoint as ckpt

    a = store.load_artifact(exported["version"])
    m = a.manifest
    ds = load_mmrec(exported["data"])
    emb = ckpt.load_embeddings(exported["ckpt"])
    assert (m.n_users, m.n_items, m.embedding_dim, m.max_history) == (N_USERS, N_ITEMS, DIM, 20)
    assert m.data_fingerprint == ds.fingerprint() and m.backbone == "bpr" and m.mrdib is None
    assert m.components == ["collaborative", "shared"]
    assert [(s.name, s.dim) for s in m.modalities] == [(k, v) for k, v in ds.feature_dims.items()]
    np.testing.assert_array_equal(a.item_vectors, emb.item)
    np.testing.assert_allclose(a.item_components.sum(0), a.item_vectors, atol=1e-5)
    np.testing.assert_array_equal(a.item_popularity, ds.item_popularity())
    assert a.item_ids == ds.item_ids and a.user_ids == ds.user_ids
    train = ds.train_csr()
    assert sorted(a.seen_items(3).tolist()) == train[3].indices.tolist()
    # the service feeds these rows to the user tower: most recent first
    indptr, recent = ds.recent_first()
    assert a.seen_items(3).tolist() == recent[indptr[3] : indptr[4]].tolist()
    u3 = ds.split_pairs(0)[0] == 3
    ts = dict(zip(ds.split_pairs(0)[1][u3].tolist(), ds.timestamps[ds.splits == 0][u3].tolist(), strict=True))
    assert [ts[i] for i in a.seen_items(3).tolist()] == sorted(ts.values(), reverse=True)
    assert m.metrics == {"valid": {"recall@20": 0.5}, "test": {"recall@20": 0.4}}
    for key in ("user_tower_test_recall@20", "user_vectors_test_recall@20", "item_tower_holdout_cosine"):
        assert key in m.tower_metrics
    assert m.tower_metrics["user_tower_onnx_max_abs_diff"] <= 1e-5
    assert m.tower_metrics["item_tower_onnx_max_abs_diff"] <= 1e-5
    assert {k: (s.factory, s.recall_at_k) for k, s in m.indexes.items()} == {
        "ip": ("Flat", 1.0), "cosine": ("Flat", 1.0)}


def test_artifact_towers_run_in_onnxruntime(exported: dict[str, Path]) -> None:
    import onnxruntime as ort

    v = exported["version"]
    m = store.read_manifest(v)
    u = ort.InferenceSession(str(v / S.USER_TOWER), providers=["CPUExecutionProvider"])
    h = np.full((3, m.max_history), -1, np.int64)
    h[:, :2] = [[0, 1], [2, 3], [4, 5]]
    assert u.run(None, {"history": h})[0].shape == (3, DIM)
    it = ort.InferenceSession(str(v / S.ITEM_TOWER), providers=["CPUExecutionProvider"])
    feeds = {s.name: np.zeros((2, s.dim), np.float32) for s in m.modalities}
    assert it.run(None, feeds)[0].shape == (2, DIM)


def test_verify_cli_accepts_root_version_and_current(exported: dict[str, Path]) -> None:
    for target in (exported["out"], exported["version"], exported["out"] / store.CURRENT):
        r = runner.invoke(app, ["artifact", "verify", str(target)])
        assert r.exit_code == 0, r.output
        assert f"ok {exported['version'].name}" in r.output


def test_verify_cli_explains_a_folder_that_is_no_artifact(tmp_path: Path) -> None:
    r = runner.invoke(app, ["artifact", "verify", str(tmp_path)])  # a data error: exit 2, like every command
    assert r.exit_code == 2 and "neither an artifact version" in r.output
    r = runner.invoke(app, ["artifact", "verify", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not a directory" in r.output


def test_verify_does_not_need_torch(exported: dict[str, Path]) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "from typer.testing import CliRunner\n"
        "from mrdib.artifact.cli import app\n"
        f"r = CliRunner().invoke(app, ['verify', {str(exported['out'])!r}])\n"
        "print(r.output); sys.exit(r.exit_code)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ok " in p.stdout


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("schema", "unknown schema version 99"),
        ("missing", "item_ids.json: missing"),
        ("checksum", "checksum mismatch"),
        ("shape", "disagrees with manifest"),
        ("count", "disagrees with manifest"),
        ("ids", "ids, manifest says"),
        ("components", "components do not sum to the item vector \\(item row 3"),
        ("nan", "NaN or inf"),
        ("huge", "above the servable bound"),
    ],
)
def test_reader_refuses_damaged_artifacts(exported: dict[str, Path], tmp_path: Path, damage: str, message: str) -> None:
    v = _copy_version(exported, tmp_path)
    if damage == "schema":
        rewrite_manifest(v, schema_version=99)
    elif damage == "missing":
        (v / S.ITEM_IDS).unlink()
    elif damage == "checksum":
        with open(v / S.USER_TOWER, "r+b") as f:  # same size, one byte flipped
            f.seek(100)
            b = f.read(1)
            f.seek(100)
            f.write(bytes([b[0] ^ 0xFF]))
    elif damage == "shape":
        np.save(v / S.USER_VECTORS, np.zeros((N_USERS, DIM + 1), np.float32))
        _reseal(v, S.USER_VECTORS)
    elif damage == "count":
        rewrite_manifest(v, n_items=N_ITEMS + 1)
    elif damage == "ids":
        (v / S.USER_IDS).write_text(json.dumps([str(i) for i in range(N_USERS - 1)]), encoding="utf-8")
        _reseal(v, S.USER_IDS)
    elif damage == "components":  # checksums fine, but the explanation no longer adds up to the score
        comps = np.load(v / S.ITEM_COMPONENTS)
        comps[0, 3, 0] += 0.5
        np.save(v / S.ITEM_COMPONENTS, comps)
        _reseal(v, S.ITEM_COMPONENTS)
    elif damage == "nan":
        users = np.load(v / S.USER_VECTORS)
        users[1, 2] = np.nan
        np.save(v / S.USER_VECTORS, users)
        _reseal(v, S.USER_VECTORS)
    elif damage == "huge":  # finite, but its scores would overflow float32 (and JSON)
        users = np.load(v / S.USER_VECTORS)
        users[1] *= 1e30
        np.save(v / S.USER_VECTORS, users)
        _reseal(v, S.USER_VECTORS)
    with pytest.raises(ArtifactError, match=message):
        store.load_artifact(v)
    r = runner.invoke(app, ["artifact", "verify", str(v)])
    assert r.exit_code == 2
    assert message.split()[0] in r.output


def _republish(src: Path, root: Path, keep: int = 5) -> str:
    """Publish a copy of version `src` (new version id) under root; returns the new id."""
    staging = store.staging_dir(root)
    for f in src.iterdir():
        if f.name != S.MANIFEST:
            shutil.copy2(f, staging / f.name)
    fields = store.read_manifest(src).model_dump(exclude={"files", "schema_version", "model_version"})
    return store.publish(staging, fields, root, keep=keep).model_version


def test_publish_flips_current_only_after_the_version_is_complete(
    exported: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    first = _republish(exported["version"], root)
    seen_at_flip: list[str] = []
    real_write = store.atomic_write_text

    def spy(path: Path, text: str) -> None:
        if path.name == store.CURRENT:  # at the moment of the flip the new version must be complete
            seen_at_flip.append(store.verify_artifact(root / text.strip()).model_version)
        real_write(path, text)

    monkeypatch.setattr(store, "atomic_write_text", spy)
    second = _republish(exported["version"], root)
    assert seen_at_flip == [second] and store.current_version(root) == second != first

    # a publish that dies before the rename leaves `current`, and the set of versions, untouched
    def broken_rename(a: object, b: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(store.os, "rename", broken_rename)
    with pytest.raises(OSError, match="disk on fire"):
        _republish(exported["version"], root)
    assert store.current_version(root) == second
    assert store.list_versions(root) == sorted([first, second])


def test_publish_refuses_an_incomplete_staging_dir(exported: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    staging = store.staging_dir(root)
    for f in exported["version"].iterdir():
        if f.name not in (S.MANIFEST, S.INDEX_COS):
            shutil.copy2(f, staging / f.name)
    fields = store.read_manifest(exported["version"]).model_dump(exclude={"files", "schema_version", "model_version"})
    with pytest.raises(ArtifactError, match=r"index_cos\.faiss"):
        store.publish(staging, fields, root)
    assert store.current_version(root) is None and store.list_versions(root) == []


def test_keep_n_pruning_never_removes_current(exported: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    ids = [_republish(exported["version"], root, keep=2) for _ in range(3)]
    assert store.list_versions(root) == sorted(ids[1:]) and store.current_version(root) == ids[2]
    # roll back: current points at the older version; pruning to 1 must keep it (and drop the newer one)
    (root / store.CURRENT).write_text(ids[1] + "\n", encoding="utf-8")
    assert store.prune(root, 1) == []
    assert ids[1] in store.list_versions(root)
    (root / store.CURRENT).write_text(ids[2] + "\n", encoding="utf-8")
    assert store.prune(root, 1) == [ids[1]]
    assert store.list_versions(root) == [ids[2]]


def test_export_refuses_data_that_changed_since_training(exported: dict[str, Path], tmp_path: Path) -> None:
    other = write_tiny_mmrec(tmp_path / "other", seed=1)
    r = runner.invoke(app, ["export", "--checkpoint", str(exported["ckpt"]), "--out", str(tmp_path / "a"),
                            "--data", str(other)])
    assert r.exit_code == 2
    assert "fingerprint" in r.output and "changed since training" in r.output
    assert store.list_versions(tmp_path / "a") == []


def test_export_refuses_a_broken_checkpoint(exported: dict[str, Path], tmp_path: Path) -> None:
    c = tmp_path / "ckpt"
    shutil.copytree(exported["ckpt"], c)
    os.remove(c / "metrics.json")
    r = runner.invoke(app, ["export", "--checkpoint", str(c), "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "metrics.json: missing" in r.output
    r = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "does not exist" in r.output


@pytest.mark.parametrize(("damage", "message"), [("nan", "user vectors cannot be served: NaN or inf in row 1"),
                                                 ("huge", "user vectors cannot be served: norm")])
def test_export_refuses_vectors_that_cannot_be_served(exported: dict[str, Path], tmp_path: Path, damage: str,
                                                      message: str) -> None:
    """A diverged run (NaN, or huge but finite vectors) fails at export, before anything is published: the readers
    would refuse the version, but `current` would already point to it."""
    from training import checkpoint as ckpt

    c = tmp_path / "ckpt"
    shutil.copytree(exported["ckpt"], c)
    emb = ckpt.load_embeddings(c)
    user = emb.user.copy()
    if damage == "nan":
        user[1, 2] = np.nan
    else:  # finite (float32 holds 3.4e38), but user . item would overflow
        user *= np.float32(1e30)
    ckpt.save_embeddings(c, ckpt.Embeddings(user=user, item=emb.item, components=emb.components))
    out = tmp_path / "a"
    r = runner.invoke(app, ["export", "--checkpoint", str(c), "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert damage == "nan" or "above the servable bound" in r.output
    assert store.list_versions(out) == [] and not (out / store.CURRENT).exists()


def test_published_version_is_readable_by_other_users(exported: dict[str, Path]) -> None:
    v = exported["version"]
    assert v.stat().st_mode & 0o055 == 0o055  # group/other may list and enter
    for f in (v / S.MANIFEST, exported["out"] / store.CURRENT, v / S.USER_TOWER):
        assert f.stat().st_mode & 0o044 == 0o044, f
