"""The one exit-code rule of every `mrdib` command, so that scripts and cron jobs can tell whose fault it was.

    0  success
    1  internal error: a bug or an unexpected failure of the machine (the traceback is worth reporting)
    2  usage or data error: a bad option, a missing or invalid file, a corrupt artifact (the message names it)

Click already exits 2 for a malformed command line; `fail` gives the same code to what the commands find
wrong themselves. A command with more outcomes to report documents them on top of these (`mrdib retrain`:
3 when the new model fails the quality gate, 69 when Redis is unreachable, 75 when another run holds the
lock; sysexits.h numbers, so cron can retry the last two).
"""

from __future__ import annotations

import typer

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2


def fail(problem: object, prefix: str = "error") -> typer.Exit:
    """Print ``error: <problem>`` on stderr and return the Exit to raise: ``raise fail(e) from None``."""
    typer.echo(f"{prefix}: {problem}", err=True)
    return typer.Exit(EXIT_USAGE)
