"""`mrdib experiment`: the plan, grid selection by validation, resumability and the RESULTS.md section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from _train_helpers import make_tiny
from typer.testing import CliRunner

from mrdib.cli import app
from training.data.dataset import DataError
from training.experiment import load_experiment, plan_rows, resolve_dataset, write_section

BASE = {
    "device": "cpu", "threads": 1, "epochs": 2, "batch_size": 128, "topk": [10, 20],
    "backbone": {"embedding_dim": 16}, "mrdib": {"hidden_dim": 16, "shared_dim": 8, "unique_dim": 8, "synergy_dim": 8},
}  # fmt: skip


def _write_config(tmp_path: Path, data: Path) -> Path:
    exp = {
        "name": "tiny",
        "datasets": [str(data)],
        "backbones": ["bpr"],
        "seeds": [1, 2],
        "ablations": ["no_synergy"],
        "base": BASE,
        "grid": {"lr": [0.002, 0.05]},
        "grid_seeds": 1,
        "out": str(tmp_path / "runs"),
        "results": str(tmp_path / "docs" / "RESULTS.md"),
        "figure_dir": str(tmp_path / "docs"),
        "cache_dir": str(tmp_path / "cache"),
        "curves": False,
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp), encoding="utf-8")
    return path


def test_experiment_runs_rows_seeds_grid_and_writes_its_section(tmp_path: Path) -> None:
    data = make_tiny(tmp_path / "data")
    cfg = _write_config(tmp_path, data)
    results = tmp_path / "docs" / "RESULTS.md"
    results.parent.mkdir()
    others = "# Results\n\n<!-- experiment:other -->\nsomebody else's numbers\n<!-- /experiment:other -->\n"
    results.write_text(others + "\nfooter by someone else\n", encoding="utf-8")

    res = CliRunner().invoke(app, ["experiment", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    text = results.read_text(encoding="utf-8")
    assert "somebody else's numbers" in text and "footer by someone else" in text
    section = text.split("<!-- experiment:tiny -->")[1].split("<!-- /experiment:tiny -->")[0]
    for label in ("| bpr |", "| bpr +MRdIB |", "| bpr +MRdIB w/o synergy |"):
        assert label in section
    assert f"mrdib experiment --config {cfg}" in section and "Machine:" in section and " ± " in section
    assert (tmp_path / "docs" / "experiment-tiny.png").is_file()

    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    rows = summary[str(data)]
    assert set(rows) == {"bpr", "bpr +MRdIB", "bpr +MRdIB w/o synergy"}
    # The grid winner is the point with the better VALIDATION metric on the first seed.
    root = tmp_path / "runs" / "tiny" / "data" / "bpr" / "plain"
    valid = {
        p.name: json.loads((p / "seed1" / "metrics.json").read_text())["valid"]["recall@20"] for p in root.iterdir()
    }
    assert rows["bpr"]["point"] == {"lr": float(max(valid, key=valid.get).split("=")[1])}
    assert rows["bpr"]["n_seeds"] == 2
    runs = sorted((tmp_path / "runs").rglob("metrics.json"))
    assert len(runs) == 3 * (2 + 1)  # per row: 2 grid points on seed 1, then seed 2 for the winner

    # Re-running skips finished runs (files untouched) and replaces the section instead of adding one.
    stamps = {p: p.stat().st_mtime_ns for p in runs}
    res = CliRunner().invoke(app, ["experiment", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert results.read_text(encoding="utf-8").count("<!-- experiment:tiny -->") == 1

    # A subset run (--only) and --report-only still write every finished row, grid winner included.
    for extra in (["--only", "w/o synergy"], ["--report-only"]):
        res = CliRunner().invoke(app, ["experiment", "--config", str(cfg), *extra])
        assert res.exit_code == 0, res.output
        again = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())[str(data)]
        assert set(again) == set(rows) and again["bpr"]["point"] == rows["bpr"]["point"]


def test_plan_has_plain_mrdib_and_ablation_rows(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "x", "datasets": ["d"], "backbones": ["bpr", "freedom"], "ablation_backbones": ["freedom"]}
        )
    )
    labels = [r.label for r in plan_rows(load_experiment(path))]
    assert labels == [
        "bpr", "bpr +MRdIB", "freedom", "freedom +MRdIB", "freedom +MRdIB w/o IB", "freedom +MRdIB w/o unique",
        "freedom +MRdIB w/o redundant", "freedom +MRdIB w/o synergy",
    ]  # fmt: skip
    path.write_text(yaml.safe_dump({"name": "x", "datasets": ["d"], "backbones": ["nope"]}))
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        load_experiment(path)


def test_write_section_appends_then_replaces(tmp_path: Path) -> None:
    f = tmp_path / "R.md"
    write_section(f, "a", "first")
    write_section(f, "b", "other")
    write_section(f, "a", "second")
    text = f.read_text()
    assert "second" in text and "first" not in text and "other" in text and text.count("experiment:a -->") == 2


def test_synth_datasets_are_generated_once_into_the_cache(tmp_path: Path) -> None:
    a = resolve_dataset("synth:small", tmp_path)
    stamp = (tmp_path / "synth-small" / "synth_config.json").stat().st_mtime_ns
    b = resolve_dataset("synth:small", tmp_path)
    assert a.fingerprint() == b.fingerprint()
    assert (tmp_path / "synth-small" / "synth_config.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="synth:nope"):
        resolve_dataset("synth:nope", tmp_path)
