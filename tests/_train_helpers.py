"""Shared fixtures for the trainer tests (area prefix `train`): a tiny synthetic catalogue and configs.

Everything is sized so that one training epoch takes milliseconds on a loaded 2-core CPU.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from training.config import TrainConfig, load_config
from training.data.synth import SynthConfig, generate_synthetic

TINY = dict(
    name="tiny",
    seed=7,
    n_users=48,
    n_items=40,
    n_interactions=720,
    modalities=["image", "text"],
    dims=[16, 12],
    n_redundant=2,
    n_unique=2,
    n_synergy=1,
    n_noise=2,
)


def make_tiny(folder: Path, **overrides: Any) -> Path:
    """Generate the tiny MMRec-layout catalogue into `folder` (once) and return it."""
    if not (folder / "synth_config.json").is_file():
        generate_synthetic(SynthConfig(**{**TINY, **overrides}), folder)
    return folder


def tiny_config(**dotted: Any) -> TrainConfig:
    """Small, fast TrainConfig; dotted overrides like {'backbone.name': 'bpr'}."""
    base = {
        "device": "cpu",
        "threads": 1,
        "epochs": 3,
        "patience": 50,
        "batch_size": 128,
        "lr": 0.01,
        "topk": [10, 20],
        "backbone.embedding_dim": 16,
        "mrdib.hidden_dim": 16,
        "mrdib.shared_dim": 8,
        "mrdib.unique_dim": 8,
        "mrdib.synergy_dim": 8,
    }
    return load_config(None, {**base, **dotted})


def read_metrics(out: Path) -> dict:
    return json.loads((Path(out) / "metrics.json").read_text(encoding="utf-8"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(rank: int, world_size: int, port: int, argv_list: list[list[str]]) -> None:
    """torch.multiprocessing.spawn target: behave like a torchrun rank and run `mrdib train` per argv.

    Sets the same environment variables torchrun sets, so the trainer's detection path is exercised.
    """
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    import torch.distributed as dist

    from mrdib.cli import app

    # One process group for all the runs (the trainer joins an existing group and leaves it open).
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        for argv in argv_list:
            app(argv, standalone_mode=False)
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # Leave without interpreter finalisation: gloo's worker threads can still be tearing down then and
    # abort the process ("terminate called without an active exception", pytorch PR 179291), which
    # would fail a run whose results are all written. Errors above still raise and fail the spawn.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
