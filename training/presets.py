"""The settings validated for each backbone, with and without the MRdIB plug-in.

Why here, in the package: every way a user starts a model (`mrdib train --backbone NAME [--mrdib]`,
quickstart.sh, docker compose's first model, `mrdib retrain`) goes through `training.config.load_config`,
which lays the preset of the chosen backbone under the user's own file and flags. A config under configs/
would only help those who know to pass it.

Where the numbers come from: the equal-budget studies of issue 11 (docs/RESULTS.md; `mrdib study --config
configs/study-*.yaml`): every row got the same number of validation trials, and each preset is the winner
chosen on VALIDATION Recall@20, never on test, copied from the study's summary.json (`preset`: the settings
that differ from TrainConfig's defaults). A key absent here keeps TrainConfig's field default.

Two sets, because one does not carry to the other kind of data:
- PRESETS, for sparse data (at most SPARSE_LIMIT training interactions per user; also when the density cannot
  be told): chosen on ml-100k-mm-sparse (about 9 per user, like the Amazon sets this product's shops look
  like), `study:sparse` (8 trials per row), VBPR from `study:sparse-wide` (16). Trained on ml-100k-mm they
  collapsed (`study:dense`: plain FREEDOM 0.235 vs 0.342 at the field defaults). Their batch size is not
  carried (TrainConfig's 2048): the winners' 256-1024 would multiply the steps of every epoch on a larger
  catalogue, and carried as steps per epoch (`steps_per_epoch`) they stopped undertrained on ml-100k-mm
  (BPR-MF valid R@20 0.205 against 0.265 at 2048).
- DENSE_PRESETS, for denser data: chosen on ml-100k-mm (85 per user), `study:dense-tuned` (4 trials per row,
  batch sizes 1024-2048, carried).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

#: PRESETS are laid under a config for data up to this many TRAINING interactions per user, DENSE_PRESETS above
#: it. The sparse set was validated at ~9 (ml-100k-mm-sparse, like the Amazon sets); on ml-100k-mm (85 per user)
#: it lost a third of FREEDOM's test Recall@20 (`study:dense`: weight decay and early stopping tuned for 9
#: interactions stop a dense model at a popularity-like solution).
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
    # vbpr: trial 11 of 16 (study:sparse-wide), valid R@20 0.1353; batch size 512 not carried
    ('vbpr', False): {
        'backbone.params.reg_on': 'full',
        'backbone.reg_weight': 0.1,
        'lr': 0.005,
        'patience': 10,
    },
    # vbpr +MRdIB: trial 11 of 16 (study:sparse-wide), valid R@20 0.1336; batch size 256 not carried
    ('vbpr', True): {
        'backbone.embedding_dim': 128,
        'backbone.params.reg_on': 'full',
        'backbone.reg_weight': 0.01,
        'lr': 0.003,
        'mrdib.beta': 0.01,
        'mrdib.content_reg': 1.0,
        'mrdib.id_dropout': 0.1,
        'mrdib.lambda_ib': 0.3,
        'mrdib.lambda_r': 0.03,
        'mrdib.lambda_s': 0.03,
        'mrdib.lambda_u': 0.03,
        'mrdib.normalize_terms': True,
        'mrdib.synergy_penalty': 'logcosh',
        'mrdib.weight_decay': 0.0001,
        'patience': 10,
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


#: (backbone, plug-in on) -> dotted overrides, for data DENSER than SPARSE_LIMIT: the winners of
#: `study:dense-tuned` (4 trials per row on ml-100k-mm validation, 85 training interactions per user; batch
#: size included). MGCN was not searched on dense data (10-20 CPU minutes a run) and has no entry: its
#: field defaults stay.
DENSE_PRESETS: dict[tuple[str, bool], dict[str, Any]] = {
    # bpr: trial 0, valid R@20 0.3379
    ('bpr', False): {
        'backbone.reg_weight': 0.01,
    },
    # bpr +MRdIB: trial 0, valid R@20 0.3319
    ('bpr', True): {
        'backbone.reg_weight': 0.01,
        'mrdib.lambda_r': 0.1,
        'mrdib.lambda_s': 0.1,
        'mrdib.lambda_u': 0.1,
        'mrdib.normalize_terms': True,
        'mrdib.synergy_penalty': 'logcosh',
    },
    # lightgcn: trial 1, valid R@20 0.3418
    ('lightgcn', False): {
        'backbone.n_layers': 3,
        'batch_size': 1024,
        'lr': 0.01,
    },
    # lightgcn +MRdIB: trial 0, valid R@20 0.3279
    ('lightgcn', True): {
        'backbone.n_layers': 3,
        'mrdib.lambda_r': 0.1,
        'mrdib.lambda_s': 0.1,
        'mrdib.lambda_u': 0.1,
        'mrdib.normalize_terms': True,
        'mrdib.synergy_penalty': 'logcosh',
    },
    # vbpr: trial 3, valid R@20 0.3402
    ('vbpr', False): {
        'backbone.params.reg_on': 'full',
        'backbone.reg_weight': 0.01,
        'batch_size': 1024,
        'patience': 10,
    },
    # vbpr +MRdIB: trial 2, valid R@20 0.3416
    ('vbpr', True): {
        'backbone.embedding_dim': 128,
        'backbone.params.reg_on': 'full',
        'backbone.reg_weight': 0.01,
        'mrdib.beta': 0.01,
        'mrdib.content_reg': 1.0,
        'mrdib.id_dropout': 0.1,
        'mrdib.input_pca': 64,
        'mrdib.lambda_ib': 1.0,
        'mrdib.lambda_r': 0.03,
        'mrdib.lambda_s': 0.1,
        'mrdib.lambda_u': 0.3,
        'mrdib.normalize_terms': True,
        'mrdib.synergy_penalty': 'logcosh',
        'mrdib.weight_decay': 0.0001,
    },
    # freedom: trial 3, valid R@20 0.3465
    ('freedom', False): {
        'backbone.params.dropout': 0.9,
        'backbone.params.knn_k': 10,
        'batch_size': 1024,
        'lr': 0.005,
    },
    # freedom +MRdIB: trial 0, valid R@20 0.3387
    ('freedom', True): {
        'mrdib.lambda_r': 0.1,
        'mrdib.lambda_s': 0.1,
        'mrdib.lambda_u': 0.1,
        'mrdib.normalize_terms': True,
        'mrdib.synergy_penalty': 'logcosh',
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


Tier = Literal["sparse", "dense"]


def tier(data: str | None) -> Tier:
    """Which presets fit this data: `dense` above SPARSE_LIMIT training interactions per user, else `sparse`
    (also when the density cannot be told cheaply, e.g. a synthetic spec: the sparse case is this product's)."""
    density = train_interactions_per_user(data)
    return "dense" if density is not None and density > SPARSE_LIMIT else "sparse"


def preset(backbone: str, mrdib: bool, which: Tier = "sparse") -> dict[str, Any]:
    """Dotted overrides validated for `backbone` (with the plug-in when `mrdib`) on data of tier `which`;
    {} when none is known (TrainConfig's field defaults stay)."""
    table = PRESETS if which == "sparse" else DENSE_PRESETS
    return dict(table.get((backbone, mrdib), {}))


def preset_for(backbone: str, mrdib: bool, data: str | None) -> dict[str, Any]:
    """`preset` of the tier `data` falls in; says in the log which one was laid under the config."""
    which = tier(data)
    chosen = preset(backbone, mrdib, which)
    label = f"{backbone}{' +MRdIB' if mrdib else ''}"
    if chosen:
        log.info("validated %s preset for %s laid under the config (%s)", which, label, data)
    else:
        log.warning("no validated %s preset for %s: TrainConfig's field defaults stay (%s)", which, label, data)
    return chosen
