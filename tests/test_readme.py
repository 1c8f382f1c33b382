"""The README stays true for a newcomer: where the commands live, and every environment variable the project
reads is listed (service settings, CLI options bound to a variable, the scripts' knobs)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import typer

from mrdib.cli import app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SCRIPTS = ["quickstart.sh", ".ci/run", "deploy/train-and-publish.sh", "docker-compose.yml"]


def _cli_envvars(group: click.Group) -> set[str]:
    found: set[str] = set()
    for name in group.list_commands(click.Context(group)):
        cmd = group.get_command(click.Context(group), name)
        if isinstance(cmd, click.Group):
            found |= _cli_envvars(cmd)
            continue
        for p in cmd.params:
            envvar = getattr(p, "envvar", None)
            found |= {envvar} if isinstance(envvar, str) else set(envvar or ())
    return found


def test_readme_says_where_the_commands_live() -> None:
    head = README[: README.index("## ")]
    assert "bash quickstart.sh" in head and "bash .ci/run" in head
    assert "source .venv/bin/activate" in head and ".venv/bin/mrdib" in head
    assert (ROOT / "quickstart.sh").is_file() and (ROOT / ".ci" / "run").is_file()


def test_every_environment_variable_is_listed() -> None:
    names = {"MRDIB_" + n.upper() for n in Settings.model_fields if n != "redis_url"}
    names |= {"REDIS_URL", "MRDIB_SHARED_DATA"}
    names |= _cli_envvars(typer.main.get_command(app))
    for script in SCRIPTS:
        names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / script).read_text(encoding="utf-8")))
    missing = sorted(n for n in names if f"`{n}`" not in README)
    assert not missing, f"README.md's 'Environment variables' section does not list {missing}"


def test_readme_tells_what_the_test_command_installs_and_that_it_needs_root() -> None:
    for text in ("redis-server", "docker-compose", "chromium", "sudo -n", "root"):
        assert text in README, text
