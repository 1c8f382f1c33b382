"""`mrdib data ...` commands through typer's CliRunner: summaries, exit codes, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tests._data_helpers import shared_copy_with_short_text_features, shared_dataset
from tests.test_data_grouplens import make_grouplens
from training.data.cli import app
from training.data.mmrec import load_mmrec
from training.data.synth import load_factors

runner = CliRunner()


def test_inspect_shared_ml100k_mm() -> None:
    result = runner.invoke(app, ["inspect", str(shared_dataset("ml-100k-mm"))])
    assert result.exit_code == 0, result.output
    for text in ("943", "1,682", "80,024", "9,988", "meta", "29", "text", "384"):
        assert text in result.output
    result = runner.invoke(app, ["inspect", str(shared_dataset("ml-100k-mm")), "--json"])
    s = json.loads(result.output)
    assert (s["users"], s["items"]) == (943, 1682)
    assert s["interactions"] == {"train": 80024, "valid": 9988, "test": 9988}
    assert s["modalities"] == {"meta": 29, "text": 384}


def test_inspect_short_feature_file_exits_2_naming_it(tmp_path: Path) -> None:
    d = shared_copy_with_short_text_features(tmp_path)
    result = runner.invoke(app, ["inspect", str(d)])
    assert result.exit_code == 2
    assert "text_feat.npy" in result.output and "1681" in result.output
    assert "Traceback" not in result.output


def test_synth_then_inspect(tmp_path: Path) -> None:
    out = tmp_path / "s"
    result = runner.invoke(app, ["synth", "--out", str(out), "--users", "120", "--items", "90",
                                 "--interactions", "1500", "--modalities", "3", "--dims", "30,20,25",
                                 "--seed", "4", "--synergy-heavy"])  # fmt: skip
    assert result.exit_code == 0, result.output
    ds = load_mmrec(out)
    assert (ds.n_users, ds.n_items, len(ds.users)) == (120, 90, 1500)
    assert ds.feature_dims == {"audio": 25, "image": 30, "text": 20}
    assert load_factors(out)["synergy"].shape == (90, 4)  # the synergy-heavy mix plants 4 synergy factors
    config = json.loads((out / "synth_config.json").read_text())
    assert config["synergy_strength"] == 3.0 and config["seed"] == 4
    result = runner.invoke(app, ["inspect", str(out), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["total"] == 1500


def test_synth_config_file_and_bad_options(tmp_path: Path) -> None:
    cfg = tmp_path / "synth.yaml"
    cfg.write_text("n_users: 50\nn_items: 40\nn_interactions: 400\nname: tiny\n")
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "a"), "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert load_mmrec(tmp_path / "a").name == "tiny"
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "b"), "--dims", "3,3"])
    assert result.exit_code == 2 and "latent factors" in result.output
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "b"), "--dims", "3,x"])
    assert result.exit_code == 2 and "--dims" in result.output


def test_convert_grouplens_then_inspect(tmp_path: Path) -> None:
    src = make_grouplens(tmp_path / "ml")
    result = runner.invoke(app, ["convert-grouplens", str(src), "--out", str(tmp_path / "mm")])
    assert result.exit_code == 0, result.output
    ds = load_mmrec(tmp_path / "mm")
    assert ds.name == "ml100k" and ds.feature_dims == {"meta": 29}
    assert ds.item_meta[0]["title"] == "Movie 1 (1928)" and ds.item_meta[0]["genres"] == ["Animation", "Children's",
                                                                                           "Comedy"]  # fmt: skip
    assert "title" in result.output  # the display fields are reported
    shown = runner.invoke(app, ["inspect", str(tmp_path / "mm")], env={"COLUMNS": "200"})
    assert "how the features were made" in shown.output and "genres" in shown.output and "decade" in shown.output
    direct = runner.invoke(app, ["inspect", str(src), "--json"])  # GroupLens layout, auto-detected
    converted = runner.invoke(app, ["inspect", str(tmp_path / "mm"), "--json"])
    assert json.loads(direct.output)["interactions"] == json.loads(converted.output)["interactions"]


def test_inspect_unknown_layout_and_missing_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and "unknown dataset layout" in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_root_cli_registers_data_commands() -> None:
    from mrdib.cli import app as root

    result = runner.invoke(root, ["data", "--help"])
    assert result.exit_code == 0
    for cmd in ("inspect", "synth", "convert-grouplens"):
        assert cmd in result.output
