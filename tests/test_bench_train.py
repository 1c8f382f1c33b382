"""bench/train.py: the timed epoch is the trainer's epoch, cells measure and report, early-stop records parse."""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from bench import train as bt
from training.config import load_config
from training.data.mmrec import load_mmrec
from training.data.synth import SynthConfig, generate_synthetic
from training.trainer import train

TINY = dict(name="tiny", seed=3, n_users=40, n_items=32, n_interactions=600, modalities=["image", "text"],
            dims=[16, 12], n_redundant=2, n_unique=2, n_synergy=1, n_noise=2)
SMALL_YAML = "backbone: {embedding_dim: 16, n_layers: 1}\nbatch_size: 128\ntopk: [10, 20]\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bench-train") / "tiny"
    generate_synthetic(SynthConfig(**TINY), folder)
    return folder


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("configs")
    for b in bt.BACKBONES:
        (d / f"{b}.yaml").write_text(SMALL_YAML, encoding="utf-8")
    return d


@pytest.mark.parametrize(("backbone", "mrdib"), [("bpr", False), ("freedom", True)])
def test_bench_epoch_is_the_trainers_epoch(tiny: Path, tmp_path: Path, backbone: str, mrdib: bool) -> None:
    """Same seeds, sampler, optimisers and CLUB steps: the first epoch's loss terms are identical."""
    over = {"backbone.name": backbone, "backbone.embedding_dim": 16, "batch_size": 128, "epochs": 1,
            "device": "cpu", "threads": 1, "topk": [10, 20], "mrdib.enabled": mrdib,
            "mrdib.redundancy_estimator": "club", "mrdib.hidden_dim": 16}
    cfg = load_config(None, over)
    ds = load_mmrec(tiny)
    ref = train(cfg, ds, tmp_path / "run", progress=False, curves=False).history[0]["loss"]
    runner = bt.EpochRunner(cfg, ds, torch.device("cpu"))
    if mrdib:
        assert runner.club_steps == 1  # the CLUB path is exercised
    got = runner.epoch(0)
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-9), k


def _spec(tiny: Path, configs: Path, **kw) -> bt.CellSpec:
    base = dict(dataset="tiny", path=str(tiny), backbone="freedom", mrdib=True, warmup=1, epochs=2, device="cpu",
                threads=1, config_dir=str(configs))
    return bt.CellSpec(**{**base, **kw})


def test_full_epoch_mode_times_every_epoch_and_ranking(tiny: Path, configs: Path) -> None:
    res = bt.run_cell(_spec(tiny, configs))
    assert not res.error
    assert (res.n_users, res.n_items) == (40, 32) and res.n_train > 0
    assert len(res.warmup_s) == 1 and len(res.epoch_s) == 2 and len(res.eval_s) == 2 and len(res.epoch_cpu_s) == 2
    assert all(x > 0 for x in res.epoch_s + res.eval_s)
    assert res.peak_rss_mib >= res.base_rss_mib > 0
    assert res.cuda_peak_mib is None and res.device == "cpu"
    assert res.first_loss["loss"] > 0


def test_step_mode_projects_the_epoch_from_timed_steps(tiny: Path, configs: Path) -> None:
    res = bt.run_cell(_spec(tiny, configs, warmup=2, steps=5, rankings=3))
    assert len(res.step_s) == 5 and len(res.warmup_s) == 2 and len(res.start_s) == 2 and len(res.eval_s) == 3
    start = statistics.median(res.start_s)
    assert res.epoch_s[1] == pytest.approx(start + res.n_batches * statistics.median(res.step_s))
    assert res.epoch_s[0] == pytest.approx(start + res.n_batches * min(res.step_s))
    assert res.epoch_s[0] <= res.epoch_s[1] <= res.epoch_s[2]


def test_spawned_cell_reports_through_json_and_errors_are_caught(tiny: Path, configs: Path, tmp_path: Path) -> None:
    res = bt.spawn_cell(_spec(tiny, configs, backbone="bpr", mrdib=False, warmup=0, epochs=1), timeout_s=240)
    assert not res.error, res.error
    assert isinstance(res.spec, bt.CellSpec) and len(res.epoch_s) == 1
    bad = bt.spawn_cell(_spec(tmp_path / "missing", configs, backbone="bpr", epochs=1), timeout_s=240)
    assert bad.error.startswith("exit ") and "missing" in bad.error


def _run(root: Path, exp: str, ds: str, bb: str, var: str, seed: str, secs: list[float], done: bool) -> None:
    d = root / exp / ds / bb / var / "default" / seed
    d.mkdir(parents=True)
    lines = [json.dumps({"epoch": i, "seconds": s}) for i, s in enumerate(secs)]
    (d / "metrics.jsonl").write_text("\n".join([*lines, '{"epoch": 9, "sec']) + "\n", encoding="utf-8")
    (d / "config.json").write_text(json.dumps({"threads": 1, "device": "auto"}), encoding="utf-8")
    if done:
        (d / "metrics.json").write_text(json.dumps({"stopped_early": True, "device": "cpu"}), encoding="utf-8")


def test_seconds_to_early_stop_come_from_finished_runs(tmp_path: Path) -> None:
    _run(tmp_path, "dense", "ml", "freedom", "mrdib", "seed1", [2.0] * 10, True)
    _run(tmp_path, "dense", "ml", "freedom", "mrdib", "seed2", [3.0] * 20, True)
    _run(tmp_path, "dense", "ml", "freedom", "mrdib", "seed3", [1.0] * 4, False)
    _run(tmp_path, "dense", "ml", "bpr", "plain", "seed1", [1.0] * 5, False)
    _run(tmp_path, "dense", "ml", "freedom", "no_ib", "seed1", [1.0] * 7, True)
    runs = bt.experiment_runs(tmp_path)
    assert len(runs) == 5 and {r.epochs for r in runs} == {10, 20, 4, 5, 7}  # the torn last line is ignored
    headers, rows = bt.stop_table(runs)
    by = {(r[2], r[3]): dict(zip(headers, r, strict=True)) for r in rows}
    fm = by[("freedom", "yes")]
    assert fm["finished runs"] == "2" and fm["epochs to stop (median, range)"] == "15 (10..20)"
    assert fm["s to early stop (median, range)"] == "40 (20..60)" and fm["still running"] == "seed3: 4 ep / 4 s"
    assert by[("bpr", "no")]["finished runs"] == "0"
    assert by[("freedom", "yes, no_ib")]["epochs to stop (median, range)"] == "7 (7..7)"  # an ablation, apart
    assert bt.epochs_to_stop(runs, "freedom", True) == (15, "ml")
    assert bt.epochs_to_stop(runs, "bpr", False) is None


def test_report_says_no_gpu_and_labels_the_estimate(tiny: Path, configs: Path, tmp_path: Path, monkeypatch) -> None:
    cells = [bt.run_cell(_spec(tiny, configs, dataset="baby", mrdib=m, warmup=0, epochs=1)) for m in (False, True)]
    _run(tmp_path, "dense", "ml", "freedom", "mrdib", "seed1", [2.0] * 10, True)
    args = argparse.Namespace(threads=1, warmup=0, epochs=1, steps=0, warmup_steps=0, rankings=1, no_write=True)
    meta = {"command": "python -m bench.train", "elapsed": 1.0, "date": "d", "machine": "m", "torch": "t",
            "notes": ["ml-100k-mm: skipped"]}
    body = bt.render(cells, bt.experiment_runs(tmp_path), args, meta)
    assert "No GPU in this run" in body and "<= 0.4 s/epoch" in body and "NOT measured" in body
    assert "estimate: 10 epochs" in body and "ESTIMATE" in body
    assert "no finished experiment run of this backbone/variant" in body  # plain FREEDOM has none here
    assert "- ml-100k-mm: skipped" in body
    assert json.loads(body.split("```json\n")[1].split("\n```")[0])["cells"][1]["spec"]["mrdib"] is True


def test_plan_skips_missing_shared_data_and_adds_the_growth_sweep(monkeypatch) -> None:
    monkeypatch.setattr(bt, "shared_data", lambda: None)
    args = argparse.Namespace(datasets=["ml-100k-mm", "baby"], backbones=["bpr", "freedom"], scales=[0.25, 1.0],
                              warmup=1, epochs=2, steps=0, warmup_steps=3, rankings=2, device="cpu", threads=1)
    notes: list[str] = []
    specs = [s for s, _ in bt.plan(args, notes)]
    assert notes and "ml-100k-mm: skipped" in notes[0]
    assert [(s.dataset, s.backbone, s.mrdib) for s in specs] == [
        ("baby", "bpr", False), ("baby", "bpr", True), ("baby", "freedom", False), ("baby", "freedom", True),
        ("baby x0.25", "freedom", False), ("baby x0.25", "freedom", True)]
    assert all(asdict(s)["warmup"] == 1 for s in specs)


def test_report_only_re_renders_saved_and_doc_results_without_measuring(tiny: Path, configs: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    cells = [bt.run_cell(_spec(tiny, configs, dataset="baby", mrdib=m, warmup=0, epochs=1)) for m in (False, True)]
    doc = tmp_path / "B.md"
    monkeypatch.setattr(bt, "DOC", doc)
    monkeypatch.setattr(bt, "PLOTS", tmp_path)  # the repository's docs/bench/train.png stays as published
    monkeypatch.setattr(bt, "write_section", lambda name, body: bt_write(name, body, doc))
    monkeypatch.setattr(bt, "experiment_runs", lambda: [])
    monkeypatch.setattr(bt, "run_cell", lambda spec: pytest.fail("--report-only must not measure"))
    args = argparse.Namespace(threads=1, warmup=0, epochs=1, steps=0, warmup_steps=3, rankings=2, no_write=False)
    meta = {"command": "python -m bench.train --epochs 1 --warmup 0", "elapsed": 3.0, "date": "2026-01-01 00:00 UTC",
            "machine": "m; Python 3", "torch": "2.x",
            "notes": ["baby x0.5 freedom: skipped (time budget of 9 s spent)."]}
    saved = {"meta": meta, "args": {k: getattr(args, k) for k in bt.PROTOCOL_ARGS}, "cells": [asdict(c) for c in cells]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(saved), encoding="utf-8")
    assert bt.main(["--report-only", "--results", str(path)]) == 0
    text = doc.read_text(encoding="utf-8")
    assert "re-rendered" in text and "nothing was re-measured" in text and "cells measured on 2026-01-01" in text
    assert bt.saved_from_doc(doc)["cells"] == saved["cells"]
    # an old section (cells only) still re-renders: description from its text, protocol from its command line
    old = text.split("```json\n")[0] + "```json\n" + json.dumps(saved["cells"]) + "\n```\n</details>"
    old = old[old.index("<!-- bench:train -->") + len("<!-- bench:train -->"):]
    doc.write_text("<!-- bench:train -->" + old + "\n<!-- /bench:train -->\n", encoding="utf-8")
    back = bt.saved_from_doc(doc)
    assert back["args"] == {**saved["args"], "warmup": 0, "epochs": 1}
    assert back["meta"]["notes"] == meta["notes"] and back["meta"]["date"] == meta["date"]
    assert back["meta"]["torch"] == "2.x" and back["meta"]["elapsed"] == 3.0


def bt_write(name: str, body: str, doc: Path) -> Path:
    from bench._report import write_section

    return write_section(name, body, doc)
