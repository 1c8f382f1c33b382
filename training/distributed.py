"""DistributedDataParallel plumbing, so that the training loop has no `if distributed:` branches.

`torchrun --nproc_per_node N mrdib train ...` sets RANK / WORLD_SIZE / LOCAL_RANK (and the
rendezvous address); we detect them here. Backend: nccl on CUDA, gloo on CPU.

How the work is split (see training/trainer.py):
- every rank draws the same epoch permutation and negatives from the shared seed and takes its
  contiguous slice of each global batch, so one step of N ranks sees what one step of a single
  process with the same global batch would see;
- DDP averages the main parameters' gradients;
- the CLUB estimator's parameters are trained by a second objective (`aux_loss`) outside the
  DDP-wrapped forward, so DDP is told to ignore them and we average their gradients ourselves
  (`all_reduce_mean_`);
- rank 0 evaluates, writes checkpoints and decides early stopping; the decision is broadcast.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job. A single-process run is rank 0 of world size 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Read torchrun's environment variables (absent -> single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    try:
        return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))
    except KeyError as e:
        raise RuntimeError(f"WORLD_SIZE={world} but {e.args[0]} is not set; launch with torchrun") from e


def init(info: DistInfo, device: torch.device) -> None:
    """Join the process group (no-op for a single process or when already initialised)."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(
        backend=backend, rank=info.rank, world_size=info.world_size, timeout=timedelta(minutes=30), **kwargs
    )


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, info: DistInfo, device: torch.device, ignore: list[nn.Parameter]) -> nn.Module:
    """DDP-wrap `model` (identity for a single process).

    `ignore` are parameters DDP must not synchronise (the CLUB estimator's, reduced by hand).
    Buffers are not broadcast: they are deterministic functions of the data (graphs, features),
    some are sparse (which DDP cannot broadcast), and every rank builds them identically.
    `find_unused_parameters` because ablation switches can leave a head out of the loss.
    """
    if not info.enabled:
        return model
    if ignore:
        ids = {id(p) for p in ignore}
        names = [n for n, p in model.named_parameters() if id(p) in ids]
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    device_ids = [device.index] if device.type == "cuda" else None
    with warnings.catch_warnings():
        # torch 2.13 deprecates broadcast_buffers in favour of forward_sync_buffers, whose False still
        # syncs at init (sparse buffers cannot be broadcast); its own message says to keep this for now.
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, broadcast_buffers=False, find_unused_parameters=True
        )


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_mean_(params: list[nn.Parameter], info: DistInfo) -> None:
    """Average the gradients of `params` over ranks, in place (one flattened all-reduce)."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def mean_scalars(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Average per-rank scalars (epoch loss terms) so rank 0 logs the global mean."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= info.world_size
    return dict(zip(keys, t.tolist(), strict=True))


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's boolean, on every rank (used for the early-stopping decision)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def params_in_sync(model: nn.Module, info: DistInfo, device: torch.device) -> bool:
    """Whether every rank holds the same parameters (a guard: DDP keeps the main ones equal, our
    manual all-reduce the CLUB ones; a bug in either shows up here). Compares per-tensor sums."""
    if not info.enabled:
        return True
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(device)
    lo, hi = sums.clone(), sums.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.allclose(lo, hi, rtol=1e-6, atol=1e-8))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
