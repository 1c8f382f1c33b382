"""The `mrdib` command line as a newcomer meets it: commands in workflow order, every option described with its
default, required options marked, and one exit-code rule (mrdib/exits.py): 2 usage or data error, 1 internal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from mrdib.cli import app
from mrdib.exits import EXIT_INTERNAL, EXIT_USAGE
from training.config import TrainConfig

runner = CliRunner()
WIDE = {"COLUMNS": "220"}


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out = []
    for name in group.list_commands(click.Context(group)):
        cmd = group.get_command(click.Context(group), name)
        if isinstance(cmd, click.Group):
            out += _commands(cmd, f"{prefix}{name} ")
        else:
            out.append((f"{prefix}{name}", cmd))
    return out


ROOT = typer.main.get_command(app)


def test_commands_are_listed_in_workflow_order() -> None:
    assert ROOT.list_commands(click.Context(ROOT))[:6] == ["data", "train", "export", "serve", "retrain", "artifact"]
    data = ROOT.get_command(click.Context(ROOT), "data")
    assert data.list_commands(click.Context(data)) == ["build", "convert-grouplens", "synth", "inspect"]
    shown = runner.invoke(app, ["--help"], env=WIDE).output
    positions = [shown.index(f" {name} ") for name in ("data", "train", "export", "serve", "retrain")]
    assert positions == sorted(positions)
    assert "2 usage or data error" in shown


@pytest.mark.parametrize(("name", "command"), _commands(ROOT), ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_is_described_with_its_default(name: str, command: click.Command) -> None:
    for p in command.params:
        if not isinstance(p, click.Option) or p.name == "help":
            continue
        assert p.help, f"mrdib {name} {p.opts[0]}: no help text"
        told = (p.default is not None or p.required or p.is_flag or isinstance(p.show_default, str)
                or p.envvar or "env" in p.help.lower())  # fmt: skip
        assert told, f"mrdib {name} {p.opts[0]}: defaults to nothing and does not say what that means"


def test_train_help_marks_required_options_and_shows_the_config_defaults() -> None:
    shown = runner.invoke(app, ["train", "--help"], env=WIDE).output
    lines = {line.split()[1]: line for line in shown.splitlines() if line.startswith("│ --")}
    assert "REQUIRED" in lines["--data"] and "REQUIRED" in lines["--out"]
    d = TrainConfig()
    preset = ", or the backbone's validated preset"  # training/presets.py replaces these per backbone
    shown_defaults = (("--seed", d.seed), ("--batch-size", f"{d.batch_size}{preset}"), ("--lr", f"{d.lr:g}{preset}"),
                      ("--epochs", f"{d.epochs}{preset}"), ("--patience", f"{d.patience}{preset}"))  # fmt: skip
    for option, value in shown_defaults:
        assert f"[default: ({value})]" in lines[option], lines[option]
        assert lines[option].split(">", 1)[1].strip().startswith(tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")), option
    missing = runner.invoke(app, ["train", "--out", "x"])
    assert missing.exit_code == EXIT_USAGE and "--data PATH is required" in missing.output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "inspect", "{tmp}/nowhere"], "does not exist"),
        (["train", "--data", "{tmp}/nowhere", "--out", "{tmp}/run", "--no-progress"], "does not exist"),
        (["export", "--checkpoint", "{tmp}/nowhere", "--out", "{tmp}/art"], "does not exist"),
        (["artifact", "verify", "{tmp}"], "neither an artifact version"),
        (["baseline", "--data", "{tmp}/nowhere", "--model", "pop"], "does not exist"),
        (["retrain", "--artifacts", "{tmp}/a", "--tolerance", "-1"], "--tolerance"),
        (["train", "--epochs", "many"], "Invalid value for '--epochs'"),
        (["data", "build", "--items", "x.csv"], "Missing option"),
    ],
)
def test_usage_and_data_errors_exit_2_with_a_message(tmp_path: Path, argv: list[str], message: str) -> None:
    result = runner.invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in argv], env=WIDE)
    assert result.exit_code == EXIT_USAGE, result.output
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback


def test_an_internal_error_exits_1_without_dumping_local_variables(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import training.data.load as load\n"
        "def broken(path, seed=2024):\n"
        "    secret = 'hunter2-local-value'\n"
        "    raise RuntimeError('boom')\n"
        "load.load_dataset = broken\n"
        "from mrdib.cli import app\n"
        f"sys.argv = ['mrdib', 'data', 'inspect', {str(tmp_path)!r}]\n"
        "app()\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})  # fmt: skip
    assert p.returncode == EXIT_INTERNAL, p.stdout + p.stderr
    assert "RuntimeError" in p.stderr and "boom" in p.stderr
    assert "hunter2-local-value" not in p.stderr + p.stdout
