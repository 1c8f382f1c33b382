"""`mrdib train` end to end through the real CLI (typer), on a tiny synthetic MMRec folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from _train_helpers import make_tiny
from typer.testing import CliRunner

from mrdib.cli import app
from training.train_cli import parse_overrides

FAST = [
    "--device", "cpu", "--no-progress",
    "--set", "threads=1", "--set", "batch_size=128", "--set", "topk=[10, 20]", "--set", "lr=0.01",
    "--set", "backbone.embedding_dim=16", "--set", "mrdib.hidden_dim=16",
]  # fmt: skip
FILES = [
    "config.json", "dataset.json", "metrics.json", "metrics.jsonl", "curves.png", "model.safetensors",
    "embeddings.safetensors", "resume/model.safetensors", "resume/optimizer.safetensors", "resume/state.json",
]  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("data") / "tiny")


def test_train_writes_every_file_and_the_metrics_contract(data_dir: Path, tmp_path: Path) -> None:
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("patience: 5\nmrdib:\n  beta: 0.001\n  shared_dim: 8\n", encoding="utf-8")
    out = tmp_path / "run"
    args = ["train", "--data", str(data_dir), "--backbone", "freedom", "--mrdib", "--seed", "3", "--epochs", "2"]
    res = CliRunner().invoke(app, [*args, "--config", str(cfg_file), *FAST, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "best epoch" in res.output
    for f in FILES:
        assert (out / f).is_file(), f
    m = json.loads((out / "metrics.json").read_text())
    for split in ("valid", "test"):
        for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20"):
            assert 0.0 <= m[split][k] <= 1.0
    assert m["backbone"] == "freedom" and m["mrdib"] is True and m["seed"] == 3 and m["epochs_run"] == 2
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["patience"] == 5 and cfg["mrdib"]["shared_dim"] == 8 and cfg["backbone"]["embedding_dim"] == 16
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["n_items"] == 40 and set(ds["modalities"]) == {"image", "text"} and len(ds["fingerprint"]) == 64
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and all("mrdib_kl" in r["loss"] for r in rows)

    # --resume DIR with more epochs continues the same run in its own directory.
    res = CliRunner().invoke(app, ["train", "--resume", str(out), "--epochs", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 3
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_progress_bar_shows_loss_and_validation(data_dir: Path, tmp_path: Path) -> None:
    fast = [a for a in FAST if a != "--no-progress"]
    args = ["train", "--data", str(data_dir), "--backbone", "bpr", "--epochs", "1", *fast, "--out", str(tmp_path)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "bpr=" in res.output and "valid recall@20=" in res.output


def test_data_errors_exit_2_with_the_message_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "x.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n", encoding="utf-8")  # no feature files
    res = CliRunner().invoke(app, ["train", "--data", str(bad), "--backbone", "bpr", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "error:" in res.output and str(bad) in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_bad_options_are_usage_errors(data_dir: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--data", str(data_dir), "--backbone", "nope", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "backbone" in res.output
    res = CliRunner().invoke(app, ["train", "--data", str(data_dir)])
    assert res.exit_code == 2 and "--out" in res.output
    res = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "none")])
    assert res.exit_code == 2 and "config.json" in res.output


def test_parse_overrides_types_values() -> None:
    got = parse_overrides(["a.b=3", "lr=1e-3", "topk=[10, 20]", "mrdib.enabled=true", "name=freedom"])
    assert got == {"a.b": 3, "lr": 0.001, "topk": [10, 20], "mrdib.enabled": True, "name": "freedom"}
    with pytest.raises(typer.BadParameter):
        parse_overrides(["novalue"])
