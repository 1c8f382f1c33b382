"""The settings validated for each backbone, with and without the MRdIB plug-in.

Why here, in the package: every way a user starts a model (`mrdib train --backbone NAME [--mrdib]`,
quickstart.sh, docker compose's first model, `mrdib retrain`) goes through `training.config.load_config`,
which lays the preset of the chosen backbone under the user's own file and flags. A config under configs/
would only help those who know to pass it.

Where the numbers come from: the equal-budget studies of issue 11 (docs/RESULTS.md, sections
`study:sparse` and `study:dense`; `mrdib study --config configs/study-{sparse,dense}.yaml`): every row got
the same number of validation trials, and each preset is the winner chosen on VALIDATION Recall@20, never
on test. A key absent here keeps TrainConfig's field default.

Chosen on the SPARSE split (ml-100k-mm-sparse, about 9 training interactions per user): the shops and media
sites this product is for have catalogues as sparse as the Amazon sets, where the content path matters most.
The dense study (`study:dense`) trained these same settings on ml-100k-mm
(85 training interactions per user) and several collapsed there (plain FREEDOM 0.235 vs 0.342 at the field
defaults), so they are laid only under configs for sparse data (SPARSE_LIMIT below). The batch size is not
part of a preset (TrainConfig's 2048): the winners' 256 would multiply the steps of every epoch on a larger
catalogue, and carried as steps per epoch (`steps_per_epoch`) the 1024-2048 winners became 5-9 steps an epoch
on ml-100k-mm and stopped undertrained (BPR-MF valid R@20 0.205 against 0.265 at 2048).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: presets are laid under a config only for data up to this many TRAINING interactions per user. They were
#: validated at ~9 (ml-100k-mm-sparse, like the Amazon sets); on ml-100k-mm (85 per user) the same settings
#: lost a third of FREEDOM's test Recall@20 (`study:dense`: weight decay and early stopping tuned for 9
#: interactions stop a dense model at a popularity-like solution). Denser data keeps TrainConfig's defaults.
SPARSE_LIMIT = 30.0

#: (backbone, plug-in on) -> dotted overrides
PRESETS: dict[tuple[str, bool], dict[str, Any]] = {
    # bpr: trial 4, valid R@20 0.1242
    ('bpr', False): {
        'backbone.reg_weight': 0.1,
        'lr': 0.003,
        'patience': 10,
    },
    # bpr +MRdIB: trial 4, valid R@20 0.1430
    ('bpr', True): {
        'backbone.reg_weight': 0.1,
        'lr': 0.003,
        'mrdib.beta': 0.01,
        'mrdib.content_reg': 1.0,
        'mrdib.id_dropout': 0.0,
        'mrdib.input_pca': 0,
        'mrdib.lambda_ib': 0.03,
        'mrdib.lambda_r': 1.0,
        'mrdib.lambda_s': 0.03,
        'mrdib.lambda_u': 0.1,
        'mrdib.normalize_terms': True,
        'mrdib.synergy_penalty': 'logcosh',
        'mrdib.weight_decay': 0.001,
        'patience': 10,
    },
    # lightgcn: trial 2, valid R@20 0.1675
    ('lightgcn', False): {
        'backbone.n_layers': 2,
        'backbone.reg_weight': 0.01,
        'lr': 0.005,
        'patience': 20,
    },
    # lightgcn +MRdIB: trial 4, valid R@20 0.1666
    ('lightgcn', True): {
        'backbone.n_layers': 3,
        'backbone.reg_weight': 0.001,
        'lr': 0.001,
        'mrdib.beta': 0.001,
        'mrdib.content_at': 'output',
        'mrdib.content_reg': 0.1,
        'mrdib.id_dropout': 0.1,
        'mrdib.input_pca': 64,
        'mrdib.lambda_ib': 0.3,
        'mrdib.lambda_r': 1.0,
        'mrdib.lambda_s': 0.1,
        'mrdib.lambda_u': 0.3,
        'mrdib.normalize_terms': True,
        'mrdib.synergy_penalty': 'logcosh',
        'mrdib.weight_decay': 0.0001,
        'patience': 10,
    },
    # vbpr: trial 3, valid R@20 0.1251
    ('vbpr', False): {
        'backbone.embedding_dim': 64,
        'backbone.params.reg_on': 'full',
        'backbone.reg_weight': 0.1,
        'lr': 0.005,
        'patience': 10,
    },
    # vbpr +MRdIB: trial 7, valid R@20 0.1312
    ('vbpr', True): {
        'backbone.embedding_dim': 128,
        'backbone.params.reg_on': 'full',
        'backbone.reg_weight': 0.01,
        'lr': 0.003,
        'mrdib.beta': 0.0001,
        'mrdib.content_reg': 1.0,
        'mrdib.id_dropout': 0.3,
        'mrdib.input_pca': 0,
        'mrdib.lambda_ib': 0.03,
        'mrdib.lambda_r': 1.0,
        'mrdib.lambda_s': 0.03,
        'mrdib.lambda_u': 0.03,
        'mrdib.normalize_terms': True,
        'mrdib.synergy_penalty': 'logcosh',
        'mrdib.weight_decay': 0.0,
        'patience': 20,
    },
    # freedom: trial 5, valid R@20 0.1466
    ('freedom', False): {
        'backbone.params.dropout': 0.8,
        'backbone.params.knn_k': 10,
        'backbone.reg_weight': 0.0,
        'lr': 0.01,
        'patience': 10,
        'weight_decay': 0.0001,
    },
    # freedom +MRdIB: trial 7, valid R@20 0.1539
    ('freedom', True): {
        'backbone.params.dropout': 0.9,
        'backbone.params.knn_k': 5,
        'backbone.reg_weight': 0.0001,
        'lr': 0.005,
        'mrdib.beta': 0.0001,
        'mrdib.content_at': 'ego',
        'mrdib.content_reg': 0.1,
        'mrdib.id_dropout': 0.0,
        'mrdib.input_pca': 64,
        'mrdib.lambda_ib': 0.03,
        'mrdib.lambda_r': 0.1,
        'mrdib.lambda_s': 1.0,
        'mrdib.lambda_u': 0.03,
        'mrdib.normalize_terms': True,
        'mrdib.synergy_penalty': 'logcosh',
        'mrdib.weight_decay': 0.0,
        'patience': 20,
        'weight_decay': 0.0001,
    },
    # mgcn: trial 1, valid R@20 0.1517
    ('mgcn', False): {
        'backbone.params.cl_weight': 0.001,
        'backbone.params.knn_k': 10,
        'backbone.reg_weight': 1e-05,
        'lr': 0.003,
        'patience': 20,
    },
    # mgcn +MRdIB: trial 0, valid R@20 0.1628
    ('mgcn', True): {
        'backbone.params.cl_weight': 0.001,
        'lr': 0.005,
        'mrdib.lambda_ib': 0.1,
        'mrdib.lambda_r': 0.1,
        'mrdib.lambda_s': 0.1,
        'mrdib.lambda_u': 0.1,
        'mrdib.normalize_terms': True,
        'mrdib.synergy_penalty': 'logcosh',
        'patience': 10,
    },
}


def train_interactions_per_user(data: str | None) -> float | None:
    """Training interactions per user of an MMRec folder (one `*.inter` file), read without loading the data;
    None where it cannot be told cheaply (no path, a synthetic spec, another layout): the preset then applies."""
    if not data or not Path(data).is_dir():
        return None
    inters = list(Path(data).glob("*.inter"))
    if len(inters) != 1:
        return None
    users: set[str] = set()
    n = 0
    with inters[0].open(encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if "userID" not in header or "x_label" not in header:
            return None
        ucol, scol = header.index("userID"), header.index("x_label")
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) > max(ucol, scol) and cols[scol].strip() == "0":
                users.add(cols[ucol])
                n += 1
    return n / len(users) if users else None


def applies(data: str | None) -> bool:
    """Whether the presets fit this data: unknown density, or at most SPARSE_LIMIT training interactions/user."""
    density = train_interactions_per_user(data)
    if density is not None and density > SPARSE_LIMIT:
        log.warning("validated presets not applied: %s has %.0f training interactions per user (> %g; they were "
                    "validated at ~9); TrainConfig's defaults stay", data, density, SPARSE_LIMIT)  # fmt: skip
        return False
    return True


def preset(backbone: str, mrdib: bool) -> dict[str, Any]:
    """Dotted overrides validated for `backbone` (with the plug-in when `mrdib`); {} when none is known."""
    return dict(PRESETS.get((backbone, mrdib), {}))
