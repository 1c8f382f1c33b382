"""Command listings in workflow order: typer lists plain commands first and groups last, alphabetically within
neither; a newcomer reading `--help` should see the steps in the order they are taken."""

from __future__ import annotations

from typer.core import TyperGroup


def ordered_group(*order: str) -> type[TyperGroup]:
    """A typer group class listing the named commands in ``order`` (others after them, as registered)."""

    class Ordered(TyperGroup):
        def list_commands(self, ctx) -> list[str]:  # type: ignore[no-untyped-def]
            names = super().list_commands(ctx)
            return sorted(names, key=lambda n: order.index(n) if n in order else len(order))

    return Ordered
