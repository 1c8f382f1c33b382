"""Validated defaults (training/presets.py) under every config, and `mrdib train --backbone auto`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from _train_helpers import make_tiny, read_metrics
from typer.testing import CliRunner

from mrdib.cli import app
from training import presets
from training.config import TrainConfig, load_config, set_dotted


@pytest.fixture
def fake_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        presets,
        "PRESETS",
        {
            ("freedom", True): {"lr": 0.007, "mrdib.content_at": "ego", "backbone.params.knn_k": 5},
            ("freedom", False): {"lr": 0.002},
            ("bpr", False): {"backbone.reg_weight": 0.05},
        },
    )


def test_the_backbone_s_preset_lies_under_the_file_and_the_flags(fake_presets: None, tmp_path: Path) -> None:
    cfg = load_config(None, {"backbone.name": "freedom", "mrdib.enabled": True})
    assert (cfg.lr, cfg.mrdib.content_at, cfg.backbone.params) == (0.007, "ego", {"knn_k": 5})
    assert load_config(None, {"backbone.name": "freedom"}).lr == 0.002  # plain FREEDOM has its own preset
    assert load_config(None, {"backbone.name": "bpr"}).backbone.reg_weight == 0.05
    assert load_config(None, {"backbone.name": "lightgcn"}).lr == 1e-3  # no preset: the field default
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"backbone": {"name": "freedom", "params": {"dropout": 0.9}}, "lr": 0.01}))
    cfg = load_config(path, {"mrdib.enabled": True})
    assert cfg.lr == 0.01 and cfg.backbone.params == {"knn_k": 5, "dropout": 0.9}  # merged, file wins
    assert load_config(path, {"mrdib.enabled": True, "lr": 0.02}).lr == 0.02  # flags win over the file
    off = load_config(None, {"backbone.name": "freedom", "mrdib.enabled": True, "validated_defaults": False})
    assert off.lr == 1e-3 and off.mrdib.content_at == "output"


def test_shipped_presets_are_valid_configs() -> None:
    for which in ("sparse", "dense"):
        table = presets.PRESETS if which == "sparse" else presets.DENSE_PRESETS
        assert table, which
        for (backbone, enabled), over in table.items():
            assert presets.preset(backbone, enabled, which) == over
            cfg = TrainConfig.model_validate(set_dotted({}, {**over, "backbone.name": backbone,
                                                             "mrdib.enabled": enabled}))
            assert cfg.backbone.name == backbone and cfg.mrdib.enabled == enabled
            assert not {k for k in over if k in ("data", "seed", "out", "device")}  # settings, not a run


def test_auto_picks_the_backbone_on_validation(tmp_path: Path) -> None:
    data = make_tiny(tmp_path / "data")
    out = tmp_path / "auto-run"
    sets = ["device=cpu", "threads=1", "batch_size=128", "backbone.embedding_dim=8", "topk=[10,20]"]
    args = ["train", "--data", str(data), "--backbone", "auto", "--candidates", "bpr,lightgcn", "--no-mrdib",
            "--epochs", "2", *(a for s in sets for a in ("--set", s)), "--no-progress", "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "auto.json").read_text(encoding="utf-8"))
    assert set(report["valid"]) == {"bpr", "lightgcn"}
    best = max(report["valid"], key=report["valid"].get)
    assert report["selected"] == best and f"auto: selected {best}" in res.output
    assert read_metrics(out)["backbone"] == best  # the winner's checkpoint is the run in --out
    assert read_metrics(out)["valid"]["recall@20"] == report["valid"][best]
    for name in ("bpr", "lightgcn"):
        assert (out / "auto" / name / "metrics.json").is_file()
    bad = CliRunner().invoke(app, [*args[:5], "--candidates", "nope", *args[7:]])
    assert bad.exit_code == 2 and "unknown candidate" in bad.output


def test_steps_per_epoch_sizes_the_batch_and_an_explicit_batch_size_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(presets, "PRESETS", {("bpr", False): {"steps_per_epoch": 33}})
    cfg = load_config(None, {"backbone.name": "bpr"})
    assert cfg.batch_size_for(8216) == 249 and cfg.batch_size_for(80024) == 2425  # 33 steps on either catalogue
    assert len(range(0, 80024, cfg.batch_size_for(80024))) == 33
    mine = load_config(None, {"backbone.name": "bpr", "batch_size": 512})
    assert mine.steps_per_epoch is None and mine.batch_size_for(80024) == 512  # the user's batch size wins
    assert load_config(None, {"backbone.name": "bpr", "validated_defaults": False}).batch_size_for(80024) == 2048


def _inter(folder: Path, per_user: int, users: int = 3) -> Path:
    folder.mkdir()
    rows = ["userID\titemID\trating\ttimestamp\tx_label"]
    rows += [f"{u}\t{i}\t1\t0\t0" for u in range(users) for i in range(per_user)]
    rows += [f"{u}\t{per_user}\t1\t0\t{s}" for u in range(users) for s in (1, 2)]  # valid/test rows do not count
    (folder / "x.inter").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def test_sparse_and_dense_data_get_their_own_presets(fake_presets: None, monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setattr(presets, "DENSE_PRESETS", {("freedom", True): {"lr": 0.0005, "backbone.params.knn_k": 10}})
    sparse, dense = _inter(tmp_path / "sparse", 9), _inter(tmp_path / "dense", 85)
    assert presets.train_interactions_per_user(str(sparse)) == 9.0
    assert (presets.tier(str(sparse)), presets.tier(str(dense)), presets.tier("synth:small")) == (
        "sparse", "dense", "sparse")
    over = {"backbone.name": "freedom", "mrdib.enabled": True}
    assert load_config(None, {**over, "data": str(sparse)}).lr == 0.007  # validated at ~9 per user
    cfg = load_config(None, {**over, "data": str(dense)})
    assert (cfg.lr, cfg.backbone.params, cfg.mrdib.content_at) == (0.0005, {"knn_k": 10}, "output")  # dense set only
    assert load_config(None, {**over, "data": "synth:small"}).lr == 0.007  # density unknown: the sparse preset
    # no dense preset for plain FREEDOM here: the field defaults stay, not the sparse preset
    assert load_config(None, {"backbone.name": "freedom", "data": str(dense)}).lr == 1e-3
