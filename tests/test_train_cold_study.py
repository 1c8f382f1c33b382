"""The cold-item study (training/cold_study.py): variants parse, cold items are really unseen, numbers are sane."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training import cold_study
from training.data.load import load_dataset
from training.data.synth import SynthConfig, generate_synthetic
from training.export.bench import cold_split, without_items


def test_parse_variant() -> None:
    name, over = cold_study.parse_variant("no synergy:mrdib.enabled=true,mrdib.lambda_s=1.0,topk=[10, 20],epochs=3")
    assert name == "no synergy"
    assert over == {"mrdib.enabled": True, "mrdib.lambda_s": 1.0, "topk": [10, 20], "epochs": 3}
    with pytest.raises(SystemExit, match="NAME:key=value"):
        cold_study.parse_variant("just-a-name")
    with pytest.raises(SystemExit, match="is not key=value"):
        cold_study.parse_variant("x:epochs")
    with pytest.raises(SystemExit, match="not valid YAML"):
        cold_study.parse_variant("x:topk=[10")


def test_study_trains_without_the_cold_items_and_reports(tmp_path, capsys) -> None:
    folder = generate_synthetic(SynthConfig(name="cold", seed=2, n_users=80, n_items=120, n_interactions=2500),
                                tmp_path / "synth")
    ds = load_dataset(folder)
    cold = cold_split(ds, 0.2, seed=1)
    warm = without_items(ds, cold)
    assert cold.sum() == 24 and not cold[warm.items].any()  # the model never sees a cold item's interaction

    out = tmp_path / "runs.json"
    cold_study.main(["--data", str(folder), "--seeds", "1", "--json", str(out),
                     "--variant", "bpr:backbone.name=bpr,epochs=2,batch_size=512,topk=[10, 20]"])
    printed = capsys.readouterr().out
    assert "| variant | cold-valid Recall@20 | cold-test Recall@20 |" in printed and "| bpr | " in printed
    run = json.loads(out.read_text())["bpr"]["runs"][0]
    for key in ("cold_valid_recall@20", "cold_test_recall@20", "valid_recall@20"):
        assert np.isfinite(run[key]) and 0.0 <= run[key] <= 1.0, key
    assert run["epochs"] == 2
