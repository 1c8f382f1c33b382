"""Device, precision, threads and seeding, decided once at the edge of a training run.

Models never call `.cuda()` or look at the environment: the trainer picks a `torch.device` here
and hands it to `ModelContext`. Everything device-specific (autocast, thread count, CUDA seeds)
lives in this module so that the training loop reads the same on CPU and GPU.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch


def select_device(preference: str = "auto", local_rank: int | None = None) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' fails loudly when there is no GPU.

    Under DDP each process drives the GPU of its LOCAL_RANK.
    """
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {preference!r}")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but torch.cuda.is_available() is False")
    index = local_rank if local_rank is not None else torch.cuda.current_device()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when `enabled`; a no-op elsewhere.

    bf16 (not fp16) so no loss scaler is needed; on CPU autocast is slower than fp32 for these
    small embedding models, so `amp` is ignored there rather than silently changing numerics.
    """
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_threads(requested: int = 0, world_size: int = 1) -> int:
    """Set torch's intra-op threads and return the number used.

    `requested` > 0 is taken as is. Auto (0): this process's share of the cores (cores / local DDP
    ranks), reduced to the cores the machine has idle right now (1-minute load average). Why: these
    models run many small kernels, and OpenMP threads that compete for busy cores spin-wait; on a
    shared 2-core box with load 9, two threads made FREEDOM+MRdIB ~20x slower than one.
    """
    if requested > 0:
        n = requested
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        share = max(1, cores // max(1, world_size))
        try:
            idle = int(cores - os.getloadavg()[0] + 0.5)
        except OSError:  # getloadavg is unavailable on some platforms
            idle = share
        n = max(1, min(share, idle))
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, epoch, rank, ...), stable across processes/runs."""
    ss = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Switch to eval mode for the block and restore the previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
