"""`mrdib study`: equal trial budget per row, seeded trial sampling, winners by validation, paired bootstrap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from _train_helpers import make_tiny
from typer.testing import CliRunner

from mrdib.cli import app
from training.checkpoint import load_per_user
from training.config import TrainConfig, set_dotted
from training.evaluation.bootstrap import paired_bootstrap
from training.study import (
    RUN_KEYS,
    Row,
    StudyConfig,
    _flat,
    _rng,
    row_space,
    row_trials,
    run_overrides,
    sample_trials,
)

BASE = {
    "device": "cpu", "threads": 1, "epochs": 2, "patience": 5, "batch_size": 128, "topk": [10, 20],
    "backbone": {"embedding_dim": 16}, "mrdib": {"hidden_dim": 16, "shared_dim": 8, "unique_dim": 8, "synergy_dim": 8},
}  # fmt: skip


def _study(tmp_path: Path, data: Path, **extra: object) -> dict:
    return {
        "name": "tiny",
        "datasets": [str(data)],
        "backbones": ["bpr", "lightgcn"],
        "trials": 3,
        "tune_seed": 1,
        "seeds": [1, 2],
        "base": BASE,
        "space": {"lr": [0.002, 0.02, 0.05]},
        "backbone_space": {"lightgcn": {"backbone.n_layers": [1, 2]}},
        "content_space": {"mrdib.content_at": ["output", "ego"]},
        "mrdib_space": {"mrdib.lambda_u": [0.03, 0.3]},
        "bootstrap_resamples": 200,
        "out": str(tmp_path / "runs"),
        "results": str(tmp_path / "RESULTS.md"),
        "cache_dir": str(tmp_path / "cache"),
        **extra,
    }


def test_every_row_gets_the_same_number_of_distinct_trials_reproducibly() -> None:
    spaces = {
        "space": {"lr": [1, 2, 3], "batch_size": [4, 5, 6]},
        "content_space": {"mrdib.content_reg": [0.1, 1.0]},
        "mrdib_space": {"mrdib.lambda_u": [0.03, 0.1, 0.3, 1.0]},
    }
    study = StudyConfig.model_validate({"name": "s", "datasets": ["d"], "backbones": ["freedom"], "trials": 6} | spaces)
    for variant in ("plain", "content", "mrdib"):
        row = Row("freedom", variant)
        trials = row_trials(study, "d", row)
        assert len(trials) == 6 and trials[0] == {}  # trial 0: the starting configuration
        assert len({tuple(sorted(t.items())) for t in trials}) == 6  # no point twice
        assert all(set(t) == set(row_space(study, row)) for t in trials[1:])
        assert trials == row_trials(study, "d", row)  # seeded: the same plan on every call
    assert "mrdib.lambda_u" not in row_space(study, Row("freedom", "content"))
    assert "mrdib.content_reg" not in row_space(study, Row("freedom", "plain"))
    # a space smaller than the budget is enumerated, not sampled with repeats
    assert len(sample_trials({"lr": [1, 2]}, 10, _rng(0))) == 3


def test_a_row_start_sits_under_the_trial_point_and_only_in_its_own_row() -> None:
    study = StudyConfig.model_validate({
        "name": "s", "datasets": ["d"], "backbones": ["freedom"], "fixed": {"freedom": {"lr": 0.1, "patience": 3}},
        "start": {"freedom": {"mrdib": {"lr": 0.2, "mrdib.lambda_s": 1.0}}},
    })  # fmt: skip
    start = run_overrides(study, "d", Row("freedom", "mrdib"), {}, seed=1)
    assert start["lr"] == 0.2 and start["mrdib.lambda_s"] == 1.0 and start["patience"] == 3
    assert run_overrides(study, "d", Row("freedom", "mrdib"), {"lr": 0.3}, seed=1)["lr"] == 0.3  # trials move it
    assert run_overrides(study, "d", Row("freedom", "content"), {}, seed=1)["lr"] == 0.1  # other rows: fixed
    with pytest.raises(ValueError):  # a row that does not exist is a typo, not a silently unused start
        typo = {"bpr": {"mrdb": {}}}
        StudyConfig.model_validate({"name": "s", "datasets": ["d"], "backbones": ["bpr"], "start": typo})


def test_paired_bootstrap_sees_a_consistent_gain_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    base = rng.random((3, 500))
    better = base + 0.05 + rng.normal(0, 0.01, base.shape)
    d = paired_bootstrap(better, base, resamples=500)
    assert d.shown and d.low > 0.03 and abs(d.mean - 0.05) < 0.005
    noise = paired_bootstrap(base + rng.normal(0, 0.2, base.shape), base, resamples=500)
    assert noise.low < 0 < noise.high and not noise.shown and "not shown" in noise.describe()
    with pytest.raises(ValueError, match="different users"):
        paired_bootstrap(base, base[:, :10])


def test_study_tunes_rows_retrains_winners_and_writes_intervals(tmp_path: Path) -> None:
    data = make_tiny(tmp_path / "data")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(tmp_path, data)), encoding="utf-8")
    res = CliRunner().invoke(app, ["study", "--config", str(path)])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    section = text.split("<!-- study:tiny -->")[1].split("<!-- /study:tiny -->")[0]
    for label in ("| bpr |", "| bpr +content |", "| bpr +MRdIB |", "| lightgcn +MRdIB |"):
        assert label in section
    assert "3 validation trials per row" in section and "seeds [1, 2]" in section
    assert section.count(" [") >= 2 * 3 * 2  # an interval for every compared pair and metric
    runs = tmp_path / "runs" / "tiny" / "data"
    for backbone in ("bpr", "lightgcn"):
        for variant in ("plain", "content", "mrdib"):
            assert len(list((runs / backbone / variant).glob("trial*/seed1/metrics.json"))) == 3
            assert len(list((runs / backbone / variant).glob("trial*/seed2/metrics.json"))) == 1  # winner only
            # the winner's other seeds sit beside its own tuning run and train its own settings
            (final,) = (runs / backbone / variant).glob("trial*/seed2")
            tuned = json.loads((final.parent / "seed1" / "config.json").read_text(encoding="utf-8"))
            again = json.loads((final / "config.json").read_text(encoding="utf-8"))
            assert {**tuned, "seed": 2, "out": None} == {**again, "out": None}
    winners = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text(encoding="utf-8"))
    assert any(r["trial"] != 0 for r in next(iter(winners.values())).values())  # a winner other than trial 0 seen
    for label, r in next(iter(winners.values())).items():  # each preset rebuilds its winner's model settings
        run = json.loads((Path(r["runs"][0]) / "config.json").read_text(encoding="utf-8"))
        rebuilt = TrainConfig.model_validate(set_dotted({}, {**r["preset"], "backbone.name": run["backbone"]["name"],
                                                             "mrdib.enabled": run["mrdib"]["enabled"]}))
        mine, theirs = _flat(rebuilt.model_dump(mode="json")), _flat(run)
        plain = not run["mrdib"]["enabled"]
        assert {k: v for k, v in mine.items() if k not in RUN_KEYS and not (plain and k.startswith("mrdib."))} == {
            k: v for k, v in theirs.items() if k in mine and k not in RUN_KEYS
            and not (plain and k.startswith("mrdib."))}, label
    pu = load_per_user(next(runs.glob("bpr/plain/trial*/seed2")))
    assert pu["users"].dtype == np.int64 and pu["recall@20"].shape == pu["users"].shape
    # a second invocation trains nothing and writes the same table
    before = section
    res = CliRunner().invoke(app, ["study", "--config", str(path)])
    assert res.exit_code == 0 and "runs to train" not in res.output
    again = (tmp_path / "RESULTS.md").read_text(encoding="utf-8").split("<!-- study:tiny -->")[1]
    assert again.split("<!-- /study:tiny -->")[0].split("- Budget")[1] == before.split("- Budget")[1]


def test_a_study_file_naming_an_unknown_backbone_is_refused_with_its_path(tmp_path: Path) -> None:
    from training.study import load_study

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "datasets": ["d"], "backbones": ["frdeom"]}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"s\.yaml: unknown backbone 'frdeom'"):
        load_study(path)
    path.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ValueError, match="top level must be a mapping"):
        load_study(path)
