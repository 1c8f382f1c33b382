"""Item display metadata in the artifact: exported from the dataset, checksummed, verified, loaded; older
manifests (schema 1 and 2, without metadata) stay readable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _export_helpers import N_ITEMS, rewrite_manifest, write_tiny_checkpoint, write_tiny_mmrec
from typer.testing import CliRunner

from mrdib.artifact import schema as S
from mrdib.artifact import store
from mrdib.artifact.schema import ArtifactError
from mrdib.cli import app
from mrdib.item_meta import ITEM_META_FILE, write_item_meta
from training.data.mmrec import load_mmrec
from training.export import ExportOptions, run_export

runner = CliRunner()


def _meta(n: int) -> list[dict]:
    """Records as a shop would have them: most items titled, some with a price or tags, one with nothing."""
    out: list[dict] = []
    for r in range(n):
        rec: dict = {"title": f"Item number {r}"} if r != 5 else {}
        if r % 3 == 0:
            rec["price"] = round(1.5 + r, 2)
        if r % 4 == 0:
            rec["tags"] = ["sale", f"group-{r % 2}"]
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-meta")
    plain = write_tiny_mmrec(root / "plain")
    data = write_tiny_mmrec(root / "data")
    ds = load_mmrec(data)
    write_item_meta(data / ITEM_META_FILE, ds.item_ids, _meta(ds.n_items))
    out = {}
    for name, folder in (("meta", data), ("plain", plain)):
        ckpt = write_tiny_checkpoint(root / f"ckpt-{name}", folder, epochs=5)
        res = run_export(ExportOptions(checkpoint=ckpt, out=root / f"artifacts-{name}", tower_epochs=2,
                                       max_history=10))
        out[name] = res.path
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _reseal(version_dir: Path, name: str) -> None:
    p = version_dir / S.MANIFEST
    m = json.loads(p.read_text(encoding="utf-8"))
    f = version_dir / name
    m["files"][name] = {"sha256": store.sha256_file(f), "bytes": f.stat().st_size}
    p.write_text(json.dumps(m), encoding="utf-8")


def test_export_carries_the_metadata_checksummed(exported: dict[str, Path]) -> None:
    v = exported["meta"]
    m = store.read_manifest(v)
    assert m.schema_version == S.SCHEMA_VERSION == 3
    assert m.item_meta_fields == ["price", "tags", "title"]
    assert m.files[S.ITEM_META].sha256 == store.sha256_file(v / S.ITEM_META)
    a = store.load_artifact(v)
    assert a.item_meta == _meta(N_ITEMS)
    assert a.item_meta[4] == {"title": "Item number 4", "tags": ["sale", "group-0"]} and a.item_meta[5] == {}
    r = runner.invoke(app, ["artifact", "verify", str(v)])
    assert r.exit_code == 0, r.output


def test_a_dataset_without_metadata_exports_none(exported: dict[str, Path]) -> None:
    v = exported["plain"]
    m = store.read_manifest(v)
    assert m.item_meta_fields is None and S.ITEM_META not in m.files and not (v / S.ITEM_META).exists()
    assert store.load_artifact(v).item_meta is None


@pytest.mark.parametrize("old", [1, 2])
def test_older_manifests_without_metadata_stay_readable(exported: dict[str, Path], tmp_path: Path, old: int) -> None:
    v = _copy(exported["plain"], tmp_path)
    rewrite_manifest(v, schema_version=old)
    data = json.loads((v / S.MANIFEST).read_text(encoding="utf-8"))
    del data["item_meta_fields"]  # what a version 1 or 2 exporter wrote: no such key
    if old == 1:
        del data["side_items_merged"]
    (v / S.MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    a = store.load_artifact(v)
    assert a.manifest.schema_version == old and a.item_meta is None


def _swap_lines(v: Path) -> None:
    lines = (v / S.ITEM_META).read_text(encoding="utf-8").splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    (v / S.ITEM_META).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _drop_field(v: Path) -> None:
    recs = [json.loads(x) for x in (v / S.ITEM_META).read_text(encoding="utf-8").splitlines()]
    for r in recs:
        r.pop("price", None)
    (v / S.ITEM_META).write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("edited", "item_meta.jsonl: checksum mismatch"),
        ("missing", "item_meta.jsonl: missing"),
        ("order", "line 2: id '2' but item row 1 is '1'"),
        ("fields", r"holds the fields \['tags', 'title'\], the manifest declares \['price', 'tags', 'title'\]"),
        ("undeclared", "item_meta.jsonl is listed but item_meta_fields is not set"),
        ("unlisted", "item_meta_fields is set but the manifest lists no checksum for item_meta.jsonl"),
    ],
)
def test_verify_refuses_bad_metadata(exported: dict[str, Path], tmp_path: Path, damage: str, message: str) -> None:
    v = _copy(exported["meta"], tmp_path)
    f = v / S.ITEM_META
    if damage == "edited":
        f.write_text(f.read_text(encoding="utf-8").replace("Item number 7", "Item number 8"), encoding="utf-8")
    elif damage == "missing":
        f.unlink()
    elif damage == "order":  # resealed: only the row check can catch it
        _swap_lines(v)
        _reseal(v, S.ITEM_META)
    elif damage == "fields":
        _drop_field(v)
        _reseal(v, S.ITEM_META)
    elif damage == "undeclared":
        rewrite_manifest(v, item_meta_fields=None)
    elif damage == "unlisted":
        data = json.loads((v / S.MANIFEST).read_text(encoding="utf-8"))
        del data["files"][S.ITEM_META]
        (v / S.MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ArtifactError, match=message):
        store.load_artifact(v)
    r = runner.invoke(app, ["artifact", "verify", str(v)])
    assert r.exit_code != 0 and "item_meta" in r.output
