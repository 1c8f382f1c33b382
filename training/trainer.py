"""The training loop: BPR triples -> Adam -> validation every epoch -> early stopping -> checkpoint.

Reads top to bottom like nanoGPT's train.py. One function, `train`, does the whole run:

1. set up: device (cuda if available), DDP process group when launched by torchrun, threads, seeds;
2. build the Recommender (backbone + optional MRdIB plug-in), its Adam optimiser and, when the
   plug-in has a CLUB estimator, the estimator's own Adam;
3. per epoch: a fresh permutation of all training interactions with one uniform negative each
   (training/sampling.py), cut into global batches; under DDP every rank takes its slice of each
   global batch, so N ranks x batch/N triples == 1 process x batch triples;
4. per epoch: full-ranking validation (training/evaluation) on rank 0; the best state by
   `cfg.valid_metric` is kept in memory and written; `patience` epochs without improvement stop
   the run (rank 0 decides, the decision is broadcast);
5. at the end: the best state is restored, its TEST metrics computed (test is looked at exactly
   once, at the best-validation epoch: model selection never sees it), and metrics.json,
   embeddings.safetensors and curves.png are written.

Reproducibility and exact resume: all randomness after model construction is re-derived from
(seed, epoch[, rank]) at the start of each epoch, so a run resumed from `resume/` after epoch k
replays epochs k+1.. exactly as the uninterrupted run would have, given the model and optimiser
state saved after epoch k.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from training import checkpoint as ckpt
from training import distributed as D
from training.config import TrainConfig
from training.data.dataset import TEST, TRAIN, VALID, InteractionDataset
from training.device import autocast, configure_threads, derived_seed, eval_mode, seed_everything, select_device
from training.models.base import ModelContext
from training.sampling import NegativeSampler, batch_bounds, shard

ModelFactory = Callable[[TrainConfig, ModelContext], nn.Module]


@dataclass
class TrainResult:
    """What a run produced. `valid`/`test` are the best-validation epoch's metrics (empty on ranks > 0)."""

    out: Path
    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]
    epochs_run: int
    stopped_early: bool
    seconds: float
    history: list[dict] = field(default_factory=list)


@dataclass
class _Progress:
    """Early-stopping bookkeeping; saved to resume/state.json after every epoch."""

    epoch: int = -1  # last finished epoch
    best_epoch: int = -1
    best_valid: float = -math.inf
    bad_epochs: int = 0
    finished: bool = False
    stopped_early: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["best_valid"] = None if math.isinf(self.best_valid) else self.best_valid
        return d

    @classmethod
    def from_json(cls, d: dict) -> _Progress:
        d = dict(d)
        d["best_valid"] = -math.inf if d.get("best_valid") is None else float(d["best_valid"])
        return cls(**d)


def default_model_factory(cfg: TrainConfig, ctx: ModelContext) -> nn.Module:
    from training.models.recommender import build_recommender

    return build_recommender(cfg, ctx)


def dataset_info(dataset: InteractionDataset, path: str | None) -> dict:
    return {
        "path": path,
        "name": dataset.name,
        "fingerprint": dataset.fingerprint(),
        "n_users": dataset.n_users,
        "n_items": dataset.n_items,
        "modalities": dataset.feature_dims,
        "counts": dataset.counts(),
    }


def train(
    cfg: TrainConfig,
    dataset: InteractionDataset,
    out: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    model_factory: ModelFactory | None = None,
    dist_info: D.DistInfo | None = None,
    curves: bool = True,
) -> TrainResult:
    """Train one model to early stop and leave a checkpoint directory in `out`.

    Parameters
    ----------
    cfg:
        the full configuration (written to out/config.json).
    dataset:
        interactions with TRAIN/VALID/TEST splits and item features.
    out:
        checkpoint directory (layout in training/checkpoint.py); created if missing.
    resume:
        continue from out/resume/ (model, optimisers, early-stopping state of the last finished epoch).
    progress:
        show a rich progress bar (rank 0 only).
    model_factory:
        (cfg, ctx) -> Recommender; default `training.models.recommender.build_recommender`.
    dist_info:
        override the torchrun environment (tests); default: read RANK/WORLD_SIZE/LOCAL_RANK.
    curves:
        draw curves.png at the end (matplotlib costs ~1 s per run; sweeps of many runs may skip it).
    """
    out = Path(out)
    info = dist_info or D.env_info()
    device = select_device(cfg.device, info.local_rank if info.enabled else None)
    own_group = info.enabled and not torch.distributed.is_initialized()
    D.init(info, device)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size)) if info.enabled else 1
    n_threads = configure_threads(cfg.threads, local_world)
    ks = sorted(set(cfg.topk))
    metric_name, _, metric_k = cfg.valid_metric.partition("@")
    if metric_name not in ("recall", "ndcg", "precision", "map") or not metric_k.isdigit() or int(metric_k) not in ks:
        raise ValueError(f"valid_metric {cfg.valid_metric!r} must be <metric>@K with K in topk {ks}")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / ckpt.RESUME).mkdir(exist_ok=True)

    # --- model, optimisers -------------------------------------------------------------------------
    seed_everything(cfg.seed)  # same seed on every rank: identical initial parameters
    ctx = ModelContext.from_dataset(dataset, device)
    model = (model_factory or default_model_factory)(cfg, ctx).to(device)
    aux_params = list(model.aux_parameters())
    groups = model.param_groups(cfg.weight_decay) if hasattr(model, "param_groups") else model.main_parameters()
    opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    aux_opt = torch.optim.Adam(aux_params, lr=cfg.mrdib.club_lr) if aux_params else None
    optimizers = {"main": opt, **({"aux": aux_opt} if aux_opt else {})}
    club_steps = cfg.mrdib.club_steps if aux_opt else 0

    state = _Progress()
    best_state: dict[str, Tensor] | None = None
    history: list[dict] = []
    if resume:
        state, best_state, history = _load_resume(out, model, optimizers, device)
    ddp = D.wrap(model, info, device, ignore=aux_params)

    # --- data for sampling and evaluation ----------------------------------------------------------
    train_u, train_i = dataset.split_pairs(TRAIN)
    sampler = NegativeSampler(train_u, train_i, dataset.n_items)
    mask_csr, valid_csr, test_csr = dataset.csr(TRAIN), dataset.csr(VALID), dataset.csr(TEST)
    popularity = dataset.item_popularity()
    eval_data = (mask_csr, valid_csr, test_csr, popularity)
    bounds = batch_bounds(len(train_u), cfg.batch_size_for(len(train_u)), info.world_size)

    if info.is_main:
        if not resume:  # a stale result must not outlive a new run that crashes (experiments skip on it)
            (out / ckpt.METRICS).unlink(missing_ok=True)
        ckpt.write_json(out, ckpt.CONFIG, cfg.model_dump(mode="json"))
        ckpt.write_json(out, ckpt.DATASET, dataset_info(dataset, cfg.data))
        _rewrite_history(out, history)

    bar = _Bar(enabled=progress and info.is_main, total=cfg.epochs, steps=len(bounds), done=state.epoch + 1)
    with bar:
        for epoch in range(state.epoch + 1, cfg.epochs):
            if state.finished:
                break
            t0 = time.perf_counter()
            # Per-epoch structure (FREEDOM's pruning) from a seed all ranks share, then per-rank noise.
            torch.manual_seed(derived_seed(cfg.seed, epoch))
            model.on_epoch_start(epoch)
            torch.manual_seed(derived_seed(cfg.seed, epoch, info.rank + 1))
            trip = sampler.epoch(cfg.seed, epoch)
            users, pos, neg = (torch.as_tensor(a, device=device) for a in (trip.users, trip.pos, trip.neg))

            model.train()
            sums: dict[str, Tensor] = {}
            bar.start_epoch(epoch)
            for s, e in bounds:
                lo, hi = shard(s, e, info.rank, info.world_size)
                u, p, n = users[lo:hi], pos[lo:hi], neg[lo:hi]
                with autocast(device, cfg.amp):
                    terms = ddp(u, p, n)
                opt.zero_grad(set_to_none=True)
                # DDP averages the ranks' gradients; weighting each rank's mean loss by its share of the
                # global batch makes that average equal the full batch's mean gradient (halves of an
                # odd-sized batch differ by one triple). Exactly 1.0 for a single process.
                (terms["loss"] * (info.world_size * (hi - lo) / (e - s))).backward()
                opt.step()
                for _ in range(club_steps):  # the CLUB estimator's own objective, own optimiser
                    aux_opt.zero_grad(set_to_none=True)
                    with autocast(device, cfg.amp):
                        aux = model.aux_loss(u, p, n)
                    if aux is None:
                        break
                    aux.backward()
                    D.all_reduce_mean_(aux_params, info)
                    aux_opt.step()
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
                bar.step()
            loss = {k: float(v) / len(bounds) for k, v in sums.items()}
            loss = D.mean_scalars(loss, info, device)
            if not all(math.isfinite(v) for v in loss.values()):
                raise FloatingPointError(f"epoch {epoch}: non-finite loss {loss} (lower lr, or check the features)")
            t_train = time.perf_counter() - t0

            # --- validation, early stopping (rank 0 decides) -----------------------------------------
            valid: dict[str, float] | None = None
            stop = False
            if info.is_main and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                valid = _evaluate(model, mask_csr, valid_csr, popularity, ks, cfg.eval_batch_users)
                if valid[cfg.valid_metric] > state.best_valid:
                    state.best_valid, state.best_epoch, state.bad_epochs = valid[cfg.valid_metric], epoch, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    ckpt.save_state_dict(out / ckpt.MODEL, best_state, {"epoch": str(epoch)})
                else:
                    state.bad_epochs += cfg.eval_every
                stop = state.bad_epochs >= cfg.patience
            stop = D.broadcast_flag(stop, info, device)
            state.epoch = epoch
            state.stopped_early = stop
            state.finished = stop or epoch + 1 == cfg.epochs
            state.seconds += time.perf_counter() - t0
            if info.is_main:
                row = {
                    "epoch": epoch,
                    "loss": loss,
                    "valid": valid,
                    "best_epoch": state.best_epoch,
                    "seconds_train": round(t_train, 4),
                    "seconds": round(time.perf_counter() - t0, 4),
                }
                history.append(row)
                with (out / ckpt.HISTORY).open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                _save_resume(out, model, optimizers, state)
                bar.end_epoch(epoch, loss, valid, cfg.valid_metric, state.best_valid)
            if stop:
                break

    result = TrainResult(out, state.best_epoch, {}, {}, state.epoch + 1, state.stopped_early, state.seconds, history)
    run_info = {
        "threads": n_threads,
        "world_size": info.world_size,
        "ranks_in_sync": D.params_in_sync(model, info, device),
    }
    if info.is_main:
        result = _finish(out, model, best_state, state, history, cfg, eval_data, ks, run_info, curves)
    D.barrier(info)
    if own_group:
        D.shutdown()
    return result


# --- evaluation ----------------------------------------------------------------------------------


def _evaluate(
    model: nn.Module, mask_csr, target_csr, popularity: np.ndarray, ks: list[int], batch_users: int,
    per_user_out: dict | None = None,
) -> dict:
    """Full ranking with the deterministic embeddings: one U, I per evaluation, scores U[b] @ I.T in blocks."""
    from training.evaluation import run_evaluation

    with eval_mode(model):
        user_emb, item_emb = model.embeddings()
        user_emb, item_emb = user_emb.float(), item_emb.float()

        def score_fn(rows: Tensor) -> Tensor:
            return user_emb[rows.to(user_emb.device)] @ item_emb.T

        return run_evaluation(score_fn, mask_csr, target_csr, popularity, ks, batch_users, per_user_out=per_user_out)


def _finish(out, model, best_state, state, history, cfg, eval_data, ks, run_info: dict, curves: bool) -> TrainResult:
    """Restore the best-validation state, test it once, write metrics.json, embeddings and curves."""
    from training.plots import plot_curves

    if best_state is None:  # no evaluation happened (cannot occur with eval on the last epoch, kept for safety)
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ckpt.save_state_dict(out / ckpt.MODEL, best_state, {"epoch": str(state.epoch)})
    model.load_state_dict(best_state)
    mask_csr, valid_csr, test_csr, popularity = eval_data
    valid = _evaluate(model, mask_csr, valid_csr, popularity, ks, cfg.eval_batch_users)
    per_user: dict[str, np.ndarray] = {}
    test = _evaluate(model, mask_csr, test_csr, popularity, ks, cfg.eval_batch_users, per_user)
    ckpt.save_per_user(out, per_user)  # for paired per-user comparisons between runs (training/study.py)
    with eval_mode(model):
        ckpt.save_embeddings(out, model.export())
    metrics = {
        "best_epoch": state.best_epoch,
        "valid_metric": cfg.valid_metric,
        "valid": valid,
        "test": test,
        "epochs_run": state.epoch + 1,
        "stopped_early": state.stopped_early,
        "seconds": round(state.seconds, 3),
        "backbone": cfg.backbone.name,
        "mrdib": cfg.mrdib.enabled,
        "seed": cfg.seed,
        "device": str(next(model.parameters()).device),
        **run_info,
    }
    ckpt.write_json(out, ckpt.METRICS, metrics)
    if curves:
        plot_curves(history, out / ckpt.CURVES, cfg.valid_metric)
    return TrainResult(out, state.best_epoch, valid, test, state.epoch + 1, state.stopped_early, state.seconds, history)


# --- resume --------------------------------------------------------------------------------------


def _save_resume(out: Path, model: nn.Module, optimizers: dict, state: _Progress) -> None:
    """Last finished epoch's model, optimisers and early-stopping state (state.json written last, so a
    crash mid-save leaves the previous epoch's state.json pointing at consistent files or at newer ones)."""
    d = out / ckpt.RESUME
    ckpt.save_state_dict(d / ckpt.MODEL, model.state_dict(), {"epoch": str(state.epoch)})
    ckpt.save_optimizers(d / ckpt.OPTIMIZER, optimizers)
    tmp = d / (ckpt.STATE + ".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2), encoding="utf-8")
    tmp.replace(d / ckpt.STATE)


def _load_resume(out: Path, model: nn.Module, optimizers: dict, device: torch.device):
    d = out / ckpt.RESUME
    if not (d / ckpt.STATE).is_file():
        raise FileNotFoundError(f"{d / ckpt.STATE}: nothing to resume (no finished epoch in {out})")
    state = _Progress.from_json(json.loads((d / ckpt.STATE).read_text(encoding="utf-8")))
    best_state = None
    if (out / ckpt.MODEL).is_file():
        ckpt.load_state_dict(out / ckpt.MODEL, model, device)
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt.load_state_dict(d / ckpt.MODEL, model, device)
    ckpt.load_optimizers(d / ckpt.OPTIMIZER, optimizers)
    history = []
    if (out / ckpt.HISTORY).is_file():
        for line in (out / ckpt.HISTORY).read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if row["epoch"] <= state.epoch:  # lines written after the saved state are replayed
                    history.append(row)
    # A finished run that is resumed with more epochs continues training (unless it stopped early).
    state.finished = state.stopped_early
    return state, best_state, history


def _rewrite_history(out: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in history)
    (out / ckpt.HISTORY).write_text(text, encoding="utf-8")


# --- progress display ----------------------------------------------------------------------------


class _Bar:
    """A rich progress bar over the epoch's batches; the description carries loss and validation."""

    def __init__(self, enabled: bool, total: int, steps: int, done: int) -> None:
        self.enabled, self.total, self.steps, self.done = enabled, total, steps, done
        self.progress = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=Console(stderr=True),
                transient=False,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task("", total=self.steps, epoch=self.done)
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start_epoch(self, epoch: int) -> None:
        if self.progress is not None:
            self.progress.reset(self.task, total=self.steps, epoch=f"{epoch + 1}/{self.total}")

    def step(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def end_epoch(self, epoch: int, loss: dict, valid: dict | None, metric: str, best: float) -> None:
        if self.progress is None:
            return
        terms = " ".join(f"{k}={v:.4f}" for k, v in loss.items())
        val = f" | valid {metric}={valid[metric]:.4f} (best {best:.4f})" if valid else ""
        self.progress.update(self.task, description=terms + val)
        self.progress.console.print(f"epoch {epoch + 1:>3}: {terms}{val}", highlight=False)
