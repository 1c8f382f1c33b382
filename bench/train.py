"""Training cost benchmark: seconds per epoch, seconds per full validation ranking, peak memory, per backbone.

    python -m bench.train [--datasets ml-100k-mm,baby] [--backbones bpr,lightgcn,vbpr,freedom,mgcn]
                          [--warmup 1] [--epochs 2] [--scales 0.25,0.5] [--device auto|cpu|cuda] [--threads 1]
                          [--steps 8 --warmup-steps 3 --rankings 2] [--budget-s 840] [--no-write]
    python -m bench.train --report-only        # re-render docs/BENCHMARKS.md from the saved results

Cells: every backbone with and without MRdIB (settings from `configs/<backbone>.yaml`, the published ones;
`--mrdib` switches the plug-in on exactly as `mrdib train --mrdib` does) on

- `ml-100k-mm`: the shared folder (`$MRDIB_SHARED_DATA` or ../shared/data next to the repo); skipped with a
  note when it is absent;
- `baby`: a synthetic catalogue of Amazon Baby's shape (`training.data.synth` preset "baby": 19,445 users,
  7,050 items, 160,792 interactions, 4096-d image and 384-d text features), generated once into
  `runs/cache/bench-train/`;
- the cost-growth sweep: FREEDOM and FREEDOM+MRdIB on the same generator scaled to `--scales` x Baby (users,
  items and interactions scaled together; 1x is the `baby` cell).

Each cell runs in its OWN subprocess, so its peak RSS (`resource.getrusage`, which only ever grows within a
process) is that cell's alone; on CUDA the peak is also `torch.cuda.max_memory_allocated`. In it: the model is
built, `--warmup` epochs are run and discarded (allocator warm-up, lazy graph structures), then `--epochs`
timed epochs, each followed by one timed full validation ranking (every user x every item, the trainer's own
`_evaluate`). The epoch loop mirrors `training/trainer.py` step for step (same seeds, sampler, optimisers, CLUB
steps; a test checks the first epoch's loss equals the trainer's) minus the trainer's per-epoch checkpoint
writes. Reported: median with min..max over the timed epochs / rankings, wall time and the process's CPU time
(a loaded machine inflates the first much more than the second).

Step mode (`--steps K`): on a loaded CPU where whole epochs of every cell do not fit the time box, the
start-of-epoch work is timed, then K single optimiser steps after `--warmup-steps`, and the epoch is projected
as start + batches x step (median; fastest / slowest step for the range). The report says which mode ran.

Re-rendering: a run saves its cells and protocol to `runs/cache/bench-train/results.json` and embeds the same
JSON in its section; `--report-only` rebuilds the section from it (or from the section's JSON) and says so.

Seconds to early stop come from the experiment runs' `metrics.jsonl` under `runs/experiments/` when there are
any (epochs run x the seconds they took); for the Baby shape, where no experiment runs, they are ESTIMATED as
epochs-to-stop of the finished experiment runs of the same backbone/variant x (s/epoch + s/ranking) measured
here, and labelled as such.

Device: `--device auto` picks CUDA when torch sees a GPU (the card's name is recorded), else CPU. Timings on a
GPU synchronise before each clock read.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench._report import DOC, PLOTS, REPO, command, machine, md_table, now, section_json, text_table, write_section

BACKBONES = ("bpr", "lightgcn", "vbpr", "freedom", "mgcn")
BABY = {"n_users": 19_445, "n_items": 7_050, "n_interactions": 160_792}
CACHE = REPO / "runs" / "cache" / "bench-train"
EXPERIMENTS = REPO / "runs" / "experiments"
# The targets, on an H100/H200; not measurable on a CPU-only machine.
GPU_TARGET_EPOCH_S = 0.4
GPU_TARGET_EVAL_S = 0.3


# --- datasets -------------------------------------------------------------------------------------

def shared_data() -> Path | None:
    """The shared data folder: $MRDIB_SHARED_DATA, else ../shared/data next to the repository."""
    env = os.environ.get("MRDIB_SHARED_DATA")
    for p in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if p.is_dir():
            return p
    return None


def scale_tag(scale: float) -> str:
    return f"{scale:g}"


def synth_baby(scale: float, cache: Path = CACHE) -> Path:
    """The Baby-shaped synthetic catalogue at `scale` x Baby, generated once (atomically) into `cache`.

    Generation writes a private temporary folder and renames it into place, so an interrupted or concurrent
    run never leaves a half-written catalogue that a later run would trust."""
    from training.data.synth import SynthConfig, generate_synthetic

    tag = scale_tag(scale)
    folder = cache / f"synth-baby-x{tag}"
    if (folder / "synth_config.json").is_file():
        return folder
    sizes = {k: max(1, round(v * scale)) for k, v in BABY.items()}
    cfg = SynthConfig.preset("baby", name=f"baby_x{tag.replace('.', '_')}", **sizes)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    generate_synthetic(cfg, tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race; its copy is byte-identical
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# --- one cell (runs in its own process) -----------------------------------------------------------

@dataclass
class CellSpec:
    """What the parent asks a child process to measure."""

    dataset: str  # label shown in the tables
    path: str  # dataset folder
    backbone: str
    mrdib: bool
    warmup: int  # untimed epochs (full-epoch mode) or untimed steps (step mode)
    epochs: int  # timed epochs, each followed by a timed ranking
    device: str
    threads: int
    steps: int = 0  # > 0: step mode, time this many steps and project the epoch (see `run_cell`)
    rankings: int = 2  # timed validation rankings in step mode
    config_dir: str = str(REPO / "configs")


@dataclass
class CellResult:
    spec: CellSpec
    n_users: int = 0
    n_items: int = 0
    n_train: int = 0
    device: str = "cpu"
    device_name: str = ""
    threads: int = 1
    build_s: float = 0.0
    n_batches: int = 0
    warmup_s: list[float] = field(default_factory=list)
    epoch_s: list[float] = field(default_factory=list)  # wall s per epoch: timed, or projected in step mode
    epoch_cpu_s: list[float] = field(default_factory=list)  # this process's CPU s, the same way
    step_s: list[float] = field(default_factory=list)  # step mode: wall s of each timed step
    start_s: list[float] = field(default_factory=list)  # step mode: wall s of each epoch's start work
    eval_s: list[float] = field(default_factory=list)
    base_rss_mib: float = 0.0  # after imports and data loading, before the model exists
    peak_rss_mib: float = 0.0
    cuda_peak_mib: float | None = None
    first_loss: dict[str, float] = field(default_factory=dict)
    error: str = ""


def cell_config(spec: CellSpec):
    """The published configuration of the backbone, MRdIB switched as asked, bench device/threads."""
    from training.config import load_config

    path = Path(spec.config_dir) / f"{spec.backbone}.yaml"
    return load_config(path if path.is_file() else None, {
        "backbone.name": spec.backbone, "mrdib.enabled": spec.mrdib, "device": spec.device,
        "threads": spec.threads, "epochs": spec.warmup + spec.epochs,
    })


def _rss_mib(field: str = "VmRSS") -> float:
    """This process's resident set (VmRSS) or its high-water mark (VmHWM), MiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class EpochRunner:
    """One training epoch exactly as `training.trainer.train` runs it for a single process.

    Same order of seeding (structure seed, then the rank's noise seed), same sampler, same Adam optimisers
    and CLUB steps, loss terms summed on the device and read once per epoch. The per-epoch checkpoint
    writes of the trainer are left out: they are I/O, not training cost."""

    def __init__(self, cfg, dataset, device) -> None:
        import torch

        from training.data.dataset import TRAIN, VALID
        from training.device import seed_everything
        from training.models.base import ModelContext
        from training.models.recommender import build_recommender
        from training.sampling import NegativeSampler, batch_bounds

        self.cfg, self.device = cfg, device
        seed_everything(cfg.seed)
        ctx = ModelContext.from_dataset(dataset, device)
        self.model = build_recommender(cfg, ctx).to(device)
        aux_params = list(self.model.aux_parameters())
        self.opt = torch.optim.Adam(self.model.main_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.aux_opt = torch.optim.Adam(aux_params, lr=cfg.mrdib.club_lr) if aux_params else None
        self.club_steps = cfg.mrdib.club_steps if self.aux_opt else 0
        train_u, train_i = dataset.split_pairs(TRAIN)
        self.sampler = NegativeSampler(train_u, train_i, dataset.n_items)
        self.bounds = batch_bounds(len(train_u), cfg.batch_size_for(len(train_u)), 1)
        self.mask_csr, self.valid_csr = dataset.csr(TRAIN), dataset.csr(VALID)
        self.popularity = dataset.item_popularity()
        self.ks = sorted(set(cfg.topk))

    def start_epoch(self, epoch: int) -> tuple:
        """The per-epoch work before the first step: FREEDOM-style structure, negatives, tensors."""
        import torch

        from training.device import derived_seed

        cfg = self.cfg
        torch.manual_seed(derived_seed(cfg.seed, epoch))
        self.model.on_epoch_start(epoch)
        torch.manual_seed(derived_seed(cfg.seed, epoch, 1))
        trip = self.sampler.epoch(cfg.seed, epoch)
        self.model.train()
        self.sums = {}
        return tuple(torch.as_tensor(a, device=self.device) for a in (trip.users, trip.pos, trip.neg))

    def step(self, u, p, n) -> None:
        """One optimiser step on a batch (plus the CLUB estimator's steps), as the trainer takes it."""
        from training.device import autocast

        cfg, model = self.cfg, self.model
        with autocast(self.device, cfg.amp):
            terms = model(u, p, n)
        self.opt.zero_grad(set_to_none=True)
        (terms["loss"] * 1.0).backward()  # the trainer's DDP share factor, exactly 1.0 for one process
        self.opt.step()
        for _ in range(self.club_steps):
            assert self.aux_opt is not None
            self.aux_opt.zero_grad(set_to_none=True)
            with autocast(self.device, cfg.amp):
                aux = model.aux_loss(u, p, n)
            if aux is None:
                break
            aux.backward()
            self.aux_opt.step()
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()

    def epoch(self, epoch: int) -> dict[str, float]:
        """Run training epoch `epoch`; returns its mean loss terms (like the trainer's history row)."""
        users, pos, neg = self.start_epoch(epoch)
        for s, e in self.bounds:
            self.step(users[s:e], pos[s:e], neg[s:e])
        return {k: float(v) / len(self.bounds) for k, v in self.sums.items()}

    def validate(self) -> dict[str, float]:
        """One full validation ranking, the trainer's own function."""
        from training.trainer import _evaluate

        return _evaluate(self.model, self.mask_csr, self.valid_csr, self.popularity, self.ks,
                         self.cfg.eval_batch_users)


def run_cell(spec: CellSpec) -> CellResult:
    """Measure one cell in this process (the parent starts a fresh process per cell).

    Full-epoch mode (`steps` = 0): `warmup` epochs discarded, then `epochs` timed epochs, each followed by a
    timed ranking. Step mode (`steps` > 0, for a loaded CPU where whole epochs do not fit the time box): the
    start-of-epoch work (structure, negatives) of epochs 0 and 1 is timed, then `warmup` steps are discarded
    and `steps` steps timed one by one; the epoch is PROJECTED as start + batches x step, using the median
    step for the median and the fastest / slowest step for the range; then `rankings` timed rankings."""
    import torch

    from training.data.dataset import TRAIN
    from training.data.load import load_dataset
    from training.device import configure_threads, select_device

    res = CellResult(spec)
    cfg = cell_config(spec)
    device = select_device(cfg.device)
    res.threads = configure_threads(cfg.threads)
    res.device = str(device)
    cuda = device.type == "cuda"
    if cuda:
        res.device_name = torch.cuda.get_device_name(device)
        torch.cuda.reset_peak_memory_stats(device)

    def clock() -> tuple[float, float]:
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter(), time.process_time()

    def since(t: tuple[float, float]) -> tuple[float, float]:
        w, c = clock()
        return w - t[0], c - t[1]

    def rank() -> None:
        t = clock()
        runner.validate()
        res.eval_s.append(since(t)[0])

    dataset = load_dataset(Path(spec.path))
    res.n_users, res.n_items, res.n_train = dataset.n_users, dataset.n_items, len(dataset.split_pairs(TRAIN)[0])
    res.base_rss_mib = _rss_mib()
    t = clock()
    runner = EpochRunner(cfg, dataset, device)
    res.build_s = since(t)[0]
    res.n_batches = len(runner.bounds)
    if spec.steps == 0:
        for epoch in range(spec.warmup + spec.epochs):
            t = clock()
            loss = runner.epoch(epoch)
            wall, cpu = since(t)
            if epoch == 0:
                res.first_loss = loss
            if epoch < spec.warmup:
                res.warmup_s.append(wall)
                if epoch == spec.warmup - 1:
                    runner.validate()  # untimed: the first ranking pays one-off costs (allocations, caches)
                continue
            res.epoch_s.append(wall)
            res.epoch_cpu_s.append(cpu)
            rank()
    else:
        start_cpu = []
        for epoch in (1, 0):  # epoch 0 last: its tensors feed the steps below
            t = clock()
            users, pos, neg = runner.start_epoch(epoch)
            w, c = since(t)
            res.start_s.append(w)
            start_cpu.append(c)
        bounds = [runner.bounds[i % len(runner.bounds)] for i in range(spec.warmup + spec.steps)]
        step_cpu = []
        for i, (s, e) in enumerate(bounds):
            t = clock()
            runner.step(users[s:e], pos[s:e], neg[s:e])
            w, c = since(t)
            if i >= spec.warmup:
                res.step_s.append(w)
                step_cpu.append(c)
            else:
                res.warmup_s.append(w)
        st, stc, nb = statistics.median(res.start_s), statistics.median(start_cpu), res.n_batches
        res.epoch_s = [st + nb * x for x in (min(res.step_s), statistics.median(res.step_s), max(res.step_s))]
        res.epoch_cpu_s = [stc + nb * x for x in (min(step_cpu), statistics.median(step_cpu), max(step_cpu))]
        runner.validate()  # untimed: the first ranking pays one-off costs (allocations, caches)
        for _ in range(spec.rankings):
            rank()
    # VmHWM is the kernel's exact high-water mark; getrusage's ru_maxrss is updated lazily and was seen a few
    # hundred KiB BELOW an earlier VmRSS reading of the same process. Where /proc is absent, ru_maxrss it is.
    hwm = _rss_mib("VmHWM")
    res.peak_rss_mib = hwm if hwm == hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        res.cuda_peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    return res


def spawn_cell(spec: CellSpec, timeout_s: float) -> CellResult:
    """Run one cell in a fresh interpreter; its stdout's last line is the result JSON."""
    cmd = [sys.executable, "-m", "bench.train", "--cell", json.dumps(asdict(spec))]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.threads), "MKL_NUM_THREADS": str(spec.threads)}
    try:
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return CellResult(spec, error=f"timed out after {timeout_s:.0f} s")
    if p.returncode != 0:
        lines = p.stderr.strip().splitlines() or ["no stderr"]
        # the exception line, not pydantic's trailing "For further information" link
        tail = next((ln for ln in reversed(lines) if "Error" in ln or "Exception" in ln), lines[-1]).strip()
        return CellResult(spec, error=f"exit {p.returncode}: {tail[:300]}")
    return cell_from_json(json.loads(p.stdout.strip().splitlines()[-1]))


def cell_from_json(d: dict) -> CellResult:
    return CellResult(**{**d, "spec": CellSpec(**d["spec"])})


# --- seconds to early stop ------------------------------------------------------------------------

@dataclass
class StopRun:
    """One experiment run's record: runs/experiments/<exp>/<dataset>/<backbone>/<variant>/<grid>/<seed>, where
    variant is plain, mrdib or an ablation (no_ib, ...) and grid is the hyper-parameter point ("default")."""

    experiment: str
    dataset: str
    backbone: str
    variant: str
    grid: str
    seed: str
    epochs: int
    seconds: float
    finished: bool
    stopped_early: bool
    threads: int | None
    device: str


def experiment_runs(root: Path = EXPERIMENTS) -> list[StopRun]:
    """Every run folder with a metrics.jsonl; finished = its metrics.json exists (written at the end)."""
    runs = []
    for hist in sorted(root.glob("*/*/*/*/*/*/metrics.jsonl")):
        d = hist.parent
        rows = []
        for n, line in enumerate(hist.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written right now by a running experiment
                print(f"warning: {hist}:{n}: not JSON, ignored", file=sys.stderr)
        if not rows:
            continue
        metrics, cfg = {}, {}
        try:
            if (d / "metrics.json").is_file():
                metrics = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
            if (d / "config.json").is_file():
                cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            print(f"warning: {d}: {e}; run ignored", file=sys.stderr)
            continue
        exp, dataset, backbone, variant, grid, seed = d.relative_to(root).parts
        runs.append(StopRun(exp, dataset, backbone, variant, grid, seed, len(rows),
                            float(sum(r.get("seconds", 0.0) for r in rows)), bool(metrics),
                            bool(metrics.get("stopped_early", False)), cfg.get("threads"),
                            str(metrics.get("device", cfg.get("device", "?")))))
    return runs


def variant_label(variant: str) -> str:
    """plain -> no, mrdib -> yes, an ablation -> yes, <ablation> (e.g. no_ib: MRdIB without the IB term)."""
    return {"plain": "no", "mrdib": "yes"}.get(variant, f"yes, {variant}")


def variant_order(variant: str) -> tuple[int, str]:
    return ({"plain": 0, "mrdib": 1}.get(variant, 2), variant)


def stop_table(runs: list[StopRun]) -> tuple[list[str], list[list[str]]]:
    """Per (experiment, dataset, backbone, variant) at the default grid point: finished runs' median epochs,
    s/epoch (training + validation + checkpoint, as the trainer logs them) and total seconds."""
    headers = ["experiment", "dataset", "backbone", "MRdIB", "finished runs", "epochs to stop (median, range)",
               "s/epoch incl. validation (median)", "s to early stop (median, range)", "still running"]
    groups: dict[tuple[str, str, str, str], list[StopRun]] = {}
    for r in runs:
        if r.grid == "default":
            groups.setdefault((r.experiment, r.dataset, r.backbone, r.variant), []).append(r)
    rows = []
    for (exp, ds, bb, var), rs in sorted(groups.items(), key=lambda kv: (*kv[0][:3], variant_order(kv[0][3]))):
        done = [r for r in rs if r.finished]
        live = [r for r in rs if not r.finished]
        running = ", ".join(f"{r.seed}: {r.epochs} ep / {r.seconds:.0f} s" for r in live) or "-"
        if done:
            ep = [r.epochs for r in done]
            sec = [r.seconds for r in done]
            rows.append([exp, ds, bb, variant_label(var), str(len(done)),
                         f"{statistics.median(ep):.0f} ({min(ep)}..{max(ep)})",
                         f"{statistics.median(s / e for s, e in zip(sec, ep, strict=True)):.2f}",
                         f"{statistics.median(sec):.0f} ({min(sec):.0f}..{max(sec):.0f})", running])
        else:
            rows.append([exp, ds, bb, variant_label(var), "0", "-", "-", "-", running])
    return headers, rows


def epochs_to_stop(runs: list[StopRun], backbone: str, mrdib: bool) -> tuple[float, str] | None:
    """Median epochs of the finished default-grid runs of this backbone, plain or full MRdIB (and their datasets)."""
    var = "mrdib" if mrdib else "plain"
    done = [r for r in runs if r.finished and r.grid == "default" and r.backbone == backbone and r.variant == var]
    if not done:
        return None
    return statistics.median(r.epochs for r in done), ", ".join(sorted({r.dataset for r in done}))


# --- report ---------------------------------------------------------------------------------------

def fmt_spread(xs: list[float], digits: int = 2) -> str:
    if not xs:
        return "-"
    med = statistics.median(xs)
    if len(xs) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(xs):.{digits}f}..{max(xs):.{digits}f})"


CELL_HEADERS = ["dataset", "users x items (train)", "backbone", "MRdIB", "wall s/epoch (median, min..max)",
                "CPU s/epoch", "wall s/validation ranking", "MRdIB / plain (wall, CPU)", "build s", "peak RSS MiB",
                "device", "note"]


def cell_rows(cells: list[CellResult]) -> list[list[str]]:
    plain = {(c.spec.dataset, c.spec.backbone): c for c in cells if not c.spec.mrdib and c.epoch_s}
    rows = []
    for c in cells:
        s = c.spec
        if c.error:
            rows.append([s.dataset, "-", s.backbone, "yes" if s.mrdib else "no", "-", "-", "-", "-", "-", "-",
                         c.device, c.error])
            continue
        base = plain.get((s.dataset, s.backbone))
        ratio = "-"
        if s.mrdib and base is not None:
            ratio = (f"{statistics.median(c.epoch_s) / statistics.median(base.epoch_s):.2f}x, "
                     f"{statistics.median(c.epoch_cpu_s) / statistics.median(base.epoch_cpu_s):.2f}x")
        mem = f"{c.peak_rss_mib:,.0f}" + (f" (cuda {c.cuda_peak_mib:,.0f})" if c.cuda_peak_mib is not None else "")
        dev = c.device_name or c.device
        rows.append([s.dataset, f"{c.n_users:,} x {c.n_items:,} ({c.n_train:,})", s.backbone,
                     "yes" if s.mrdib else "no", fmt_spread(c.epoch_s), fmt_spread(c.epoch_cpu_s),
                     fmt_spread(c.eval_s), ratio, f"{c.build_s:.1f}", mem, f"{dev}, {c.threads} thr",
                     f"projected from {len(c.step_s)} steps x {c.n_batches}" if c.step_s else ""])
    return rows


def baby_stop_rows(cells: list[CellResult], runs: list[StopRun]) -> list[list[str]]:
    """ESTIMATED seconds to early stop on the Baby shape: epochs-to-stop from the experiments x cost here."""
    rows = []
    for c in cells:
        if c.spec.dataset != "baby" or c.error or not c.epoch_s:
            continue
        per_epoch = statistics.median(c.epoch_s) + statistics.median(c.eval_s)
        est = epochs_to_stop(runs, c.spec.backbone, c.spec.mrdib)
        if est is None:
            rows.append([c.spec.backbone, "yes" if c.spec.mrdib else "no", f"{per_epoch:.2f}", "-",
                         "no finished experiment run of this backbone/variant to take epochs-to-stop from"])
            continue
        ep, src = est
        rows.append([c.spec.backbone, "yes" if c.spec.mrdib else "no", f"{per_epoch:.2f}", f"~{ep * per_epoch:,.0f}",
                     f"estimate: {ep:.0f} epochs (median of finished runs on {src}) x {per_epoch:.2f} s"])
    return rows


def growth_cells(cells: list[CellResult], mrdib: bool) -> list[CellResult]:
    return sorted((c for c in cells if c.spec.backbone == "freedom" and c.spec.mrdib == mrdib
                   and c.spec.dataset.startswith("baby") and c.epoch_s), key=lambda c: c.n_items)


def plot_growth(cells: list[CellResult], path: Path) -> Path | None:
    """Epoch (wall and CPU), ranking and peak RSS of FREEDOM and FREEDOM+MRdIB against catalogue size (log-log)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not any(growth_cells(cells, m) for m in (False, True)):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for mrdib, label, colour in ((False, "FREEDOM", "tab:blue"), (True, "FREEDOM+MRdIB", "tab:red")):
        rs = growth_cells(cells, mrdib)
        if not rs:
            continue
        x = [c.n_items for c in rs]
        for ax, key, suffix in ((axes[0], "epoch_s", " wall"), (axes[1], "eval_s", " wall")):
            med = [statistics.median(getattr(c, key)) for c in rs]
            lo = [m - min(getattr(c, key)) for m, c in zip(med, rs, strict=True)]
            hi = [max(getattr(c, key)) - m for m, c in zip(med, rs, strict=True)]
            ax.errorbar(x, med, yerr=[lo, hi], fmt="o-", ms=4, capsize=3, color=colour, label=label + suffix)
        axes[0].plot(x, [statistics.median(c.epoch_cpu_s) for c in rs], "s--", ms=4, color=colour,
                     label=label + " CPU")
        axes[2].plot(x, [c.peak_rss_mib for c in rs], "o-", ms=4, color=colour, label=label)
    titles = ("training epoch (s; bars = min..max)", "full validation ranking (s, wall)", "peak RSS (MiB)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("items (users and interactions scale alike)")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle("cost growth with catalogue size, Baby-shaped synthetic data", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def growth_lines(cells: list[CellResult]) -> list[str]:
    """Growth factor and log-log slope (1 = linear in the catalogue) between the smallest and largest scale."""
    lines = []
    for mrdib, label in ((False, "FREEDOM"), (True, "FREEDOM+MRdIB")):
        rs = growth_cells(cells, mrdib)
        if len(rs) < 2:
            continue
        a, b = rs[0], rs[-1]
        span = math.log(b.n_items / a.n_items)
        parts = []
        for key, name in (("epoch_cpu_s", "CPU s/epoch"), ("epoch_s", "wall s/epoch"), ("eval_s", "wall s/ranking")):
            ma, mb = statistics.median(getattr(a, key)), statistics.median(getattr(b, key))
            parts.append(f"{name} x{mb / ma:.1f} (log-log slope {math.log(mb / ma) / span:.2f})")
        parts.append(f"peak RSS x{b.peak_rss_mib / a.peak_rss_mib:.1f}")
        lines.append(f"- {label}, {a.n_items:,} -> {b.n_items:,} items (users and interactions x"
                     f"{b.n_items / a.n_items:.0f} too): " + ", ".join(parts))
    return lines


def protocol(args: argparse.Namespace) -> str:
    if args.steps:
        return (f"STEP MODE (whole epochs do not fit this run's time box on a loaded CPU): the start-of-epoch "
                f"work (graph pruning, negative sampling) of 2 epochs is timed, {args.warmup_steps} optimiser steps "
                f"are discarded, then {args.steps} steps are timed one by one, and the epoch is PROJECTED as "
                "start + batches/epoch x step time (median step for the median, fastest / slowest step for the "
                f"range; a step includes the CLUB step when MRdIB has one); then one untimed and "
                f"{args.rankings} timed rankings.")
    return (f"{args.warmup} warm-up epoch(s) (and one ranking) discarded, then {args.epochs} timed epochs, each "
            "followed by one timed validation ranking; median (min..max) over them.")


def render(cells: list[CellResult], runs: list[StopRun], args: argparse.Namespace, meta: dict) -> str:
    main = [c for c in cells if not c.spec.dataset.startswith("baby x")]
    growth = [c for c in cells if c.spec.backbone == "freedom" and c.spec.dataset.startswith("baby")]
    gpu_cells = [c for c in cells if c.device.startswith("cuda")]
    stop_h, stop_r = stop_table(runs)
    png = plot_growth(growth, PLOTS / "train.png") if not args.no_write else None
    if gpu_cells:
        card = gpu_cells[0].device_name
        gpu_line = (f"- GPU: measured on **{card}**; the issue's targets on an H100/H200 are FREEDOM+MRdIB on the Baby "
                    f"shape <= {GPU_TARGET_EPOCH_S} s/epoch and <= {GPU_TARGET_EVAL_S} s per full validation "
                    "ranking (MMRec's plain FREEDOM: ~0.8 s/epoch, 2-3 s per evaluation there).")
    else:
        gpu_line = ("- **No GPU in this run** (torch.cuda.is_available() was False), so the issue's GPU targets -- "
                    f"FREEDOM+MRdIB on the Baby shape <= {GPU_TARGET_EPOCH_S} s/epoch and <= {GPU_TARGET_EVAL_S} s "
                    "per full validation ranking on an H100/H200, against MMRec's plain FREEDOM at ~0.8 s/epoch and "
                    "2-3 s per evaluation there -- were NOT measured and nothing below says whether they are met. "
                    "The same command on a GPU machine selects CUDA at run time (`--device auto`), records the "
                    "card's name and adds `torch.cuda.max_memory_allocated`.")
    stop_est = baby_stop_rows(cells, runs)
    return "\n".join([
        "## Training cost: seconds per epoch, per validation ranking, peak memory",
        "",
        f"- command: `{meta['command']}` ({meta['elapsed']:.0f} s)",
        f"- date: {meta['date']}; machine: {meta['machine']}; torch {meta['torch']}",
        f"- protocol: each cell in a fresh process, {args.threads} torch thread(s). " + protocol(args)
        + " A validation ranking = every validation user against every item (the trainer's `_evaluate`). "
        "Cells use the published `configs/<backbone>.yaml` settings (batch 2048, d=64), MRdIB switched on as "
        "`mrdib train --mrdib` does. The trainer's per-epoch checkpoint writes are not included. CPU s = this "
        "process's CPU time (`time.process_time`), which a loaded machine inflates much less than wall time. "
        "Peak RSS = `getrusage` max RSS of the cell's process (Python + torch + data + model); 'build s' = model "
        "construction (graphs, kNN over the features).",
        "- noise: the machine is shared with other engineers' long training runs (see the load average above); "
        "wall seconds are inflated and vary run to run (a cell whose wall time is far above its CPU time waited "
        "for a core). Compare within a table, not across runs, and prefer the CPU column and the CPU ratio of "
        "MRdIB / plain (measured in the same run on the same data).",
        gpu_line,
        *[f"- {n}" for n in meta["notes"]],
        *([f"- {meta['rerendered']}"] if meta.get("rerendered") else []),
        "",
        "### Per backbone, with and without MRdIB",
        "",
        md_table(CELL_HEADERS, cell_rows(main)),
        "",
        "### Cost growth with catalogue size (FREEDOM, Baby-shaped synthetic data)",
        "",
        md_table(CELL_HEADERS, cell_rows(growth)),
        "",
        *growth_lines(growth),
        "",
        f"![cost growth]({'bench/' + png.name})" if png else "",
        "",
        "### Seconds to early stop",
        "",
        "Measured: the experiment runs under `runs/experiments/` (default grid point), from their `metrics.jsonl` "
        "(epochs run, and the sum of each epoch's logged seconds = training + validation + checkpoint). These "
        "ran at other times under other load, with the experiment configs' settings (lr 5e-3, patience 10 for "
        f"most), not this benchmark's. Read from disk {now()}; runs still training are listed as such.",
        "",
        md_table(stop_h, stop_r) if stop_r else "_No experiment run found under runs/experiments/._",
        "",
        "Baby shape -- **ESTIMATE**, no experiment has run on it: median epochs-to-stop of the finished plain / "
        "full-MRdIB runs above (other datasets, other settings) x (wall s/epoch + s/ranking) measured in this run.",
        "",
        md_table(["backbone", "MRdIB", "wall s/epoch + ranking here", "s to early stop", "how"], stop_est)
        if stop_est else "_No Baby cell measured in this run._",
        "",
        "<details><summary>raw results (JSON; `python -m bench.train --report-only` re-renders from it)</summary>\n",
        "```json",
        json.dumps({"meta": {k: v for k, v in meta.items() if k != "rerendered"},
                    "args": {k: getattr(args, k) for k in PROTOCOL_ARGS}, "cells": [asdict(c) for c in cells]}),
        "```",
        "</details>",
    ])


# --- driver ---------------------------------------------------------------------------------------

def plan(args: argparse.Namespace, notes: list[str]) -> list[tuple[CellSpec, Path | None]]:
    """The cells to run, in order: (spec, None) means the dataset still has to be generated (lazily)."""
    specs: list[tuple[CellSpec, Path | None]] = []

    def add(label: str, path: Path, backbones: list[str]) -> None:
        for b in backbones:
            for mrdib in (False, True):
                warm = args.warmup_steps if args.steps else args.warmup
                specs.append((CellSpec(label, str(path), b, mrdib, warm, args.epochs, args.device, args.threads,
                                       args.steps, args.rankings), path))

    for ds in args.datasets:
        if ds == "baby":
            add("baby", CACHE / "synth-baby-x1", args.backbones)
        else:
            root = shared_data()
            path = root / ds if root is not None else None
            if path is None or not path.is_dir():
                notes.append(f"{ds}: skipped, the shared data folder was not found (set MRDIB_SHARED_DATA).")
                continue
            add(ds, path, args.backbones)
    for s in args.scales:
        if s != 1.0:
            add(f"baby x{scale_tag(s)}", CACHE / f"synth-baby-x{scale_tag(s)}", ["freedom"])
    return specs


PROTOCOL_ARGS = ("threads", "warmup", "epochs", "steps", "warmup_steps", "rankings")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="ml-100k-mm,baby", help="shared folder names and/or 'baby'")
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs (each followed by a timed ranking)")
    p.add_argument("--steps", type=int, default=0,
                   help="> 0: step mode, time this many optimiser steps and project the epoch (loaded CPUs)")
    p.add_argument("--warmup-steps", type=int, default=3, help="step mode: untimed steps first")
    p.add_argument("--rankings", type=int, default=2, help="step mode: timed validation rankings")
    p.add_argument("--scales", default="0.25,0.5", help="extra Baby scales for the FREEDOM cost-growth sweep")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per cell")
    p.add_argument("--budget-s", type=float, default=840.0, help="skip the remaining cells after this many seconds")
    p.add_argument("--cell-timeout-s", type=float, default=300.0)
    p.add_argument("--results", type=Path, default=CACHE / "results.json",
                   help="where a run saves its measurements / --report-only reads them")
    p.add_argument("--report-only", action="store_true",
                   help="measure nothing: re-render the section from --results, or, when that file is absent, "
                        "from the raw JSON already in docs/BENCHMARKS.md")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    p.add_argument("--cell", help=argparse.SUPPRESS)  # internal: measure one cell (JSON CellSpec), print JSON
    return p


def saved_from_doc(doc: Path = DOC) -> dict:
    """{meta, args, cells} of the run recorded in docs/BENCHMARKS.md's train section.

    Sections written before the full record was embedded hold only the cells: the run's description is then
    read back from the section's text, and its protocol arguments from its recorded command line."""
    sec, raw = section_json("train", doc)
    if isinstance(raw, dict):
        return raw
    cmd = re.search(r"- command: `([^`]*)` \((\d+) s\)", sec)
    date = re.search(r"- date: ([^;]*); machine: (.*); torch (\S+)", sec)
    if cmd is None or date is None:
        raise ValueError(f"{doc}: train section: cannot find its command / date lines")
    ns = parser().parse_args(shlex.split(cmd.group(1))[3:])  # drop "python -m bench.train"
    notes = re.findall(r"^- ((?:generated |[^:\n]+: skipped).*)$", sec, re.M)
    meta = {"command": cmd.group(1), "elapsed": float(cmd.group(2)), "date": date.group(1),
            "machine": date.group(2), "torch": date.group(3), "notes": notes}
    return {"meta": meta, "args": {k: getattr(ns, k) for k in PROTOCOL_ARGS}, "cells": raw}


def main(argv: list[str] | None = None) -> int:
    p = parser()
    a = p.parse_args(argv)
    if a.cell:
        print(json.dumps(asdict(run_cell(CellSpec(**json.loads(a.cell))))))
        return 0
    if a.report_only:
        if a.results.is_file():
            saved, src = json.loads(a.results.read_text(encoding="utf-8")), str(a.results)
        else:
            saved, src = saved_from_doc(), f"the raw JSON of the previous {DOC.name} section"
        args = argparse.Namespace(**saved["args"], no_write=a.no_write)
        meta = {**saved["meta"], "rerendered": f"re-rendered {now()} by `{command()}` from {src}: tables and "
                f"plot recomputed by the current code from the cells measured on {saved['meta']['date']}; "
                "nothing was re-measured"}
        return report([cell_from_json(c) for c in saved["cells"]], args, meta)
    a.datasets = [d for d in a.datasets.split(",") if d]
    a.backbones = [b for b in a.backbones.split(",") if b]
    if unknown := set(a.backbones) - set(BACKBONES):
        p.error(f"--backbones: unknown {sorted(unknown)}; choose from {list(BACKBONES)}")
    a.scales = sorted({float(s) for s in a.scales.split(",") if s})
    if a.warmup < 0 or a.epochs < 1 or a.steps < 0 or a.warmup_steps < 0 or a.rankings < 1:
        p.error("--warmup, --steps, --warmup-steps must be >= 0; --epochs and --rankings >= 1")

    import torch

    started, t0 = now(), time.monotonic()
    mach = machine()
    notes: list[str] = []
    cells: list[CellResult] = []
    for spec, path in plan(a, notes):
        left = a.budget_s - (time.monotonic() - t0)
        if left < 20:
            notes.append(f"{spec.dataset} {spec.backbone}{'+MRdIB' if spec.mrdib else ''}: skipped (time budget "
                         f"of {a.budget_s:.0f} s spent).")
            continue
        if path is not None and path.name.startswith("synth-baby-x") and not path.is_dir():
            t = time.monotonic()
            synth_baby(float(path.name.removeprefix("synth-baby-x")))
            notes.append(f"generated {path.relative_to(REPO)} in {time.monotonic() - t:.0f} s (cached for reruns).")
        c = spawn_cell(spec, min(a.cell_timeout_s, left))
        cells.append(c)
        print(f"{spec.dataset:<12} {spec.backbone:<9} mrdib={spec.mrdib!s:<5} epoch {fmt_spread(c.epoch_s)} s, "
              f"ranking {fmt_spread(c.eval_s)} s, peak {c.peak_rss_mib:,.0f} MiB {c.error}", flush=True)
    meta = {"command": command(), "elapsed": time.monotonic() - t0, "date": started, "machine": mach,
            "torch": torch.__version__, "notes": notes}
    a.results.parent.mkdir(parents=True, exist_ok=True)
    a.results.write_text(json.dumps({"meta": meta, "args": {k: getattr(a, k) for k in PROTOCOL_ARGS},
                                     "cells": [asdict(c) for c in cells]}), encoding="utf-8")
    return report(cells, a, meta)


def report(cells: list[CellResult], args: argparse.Namespace, meta: dict) -> int:
    """Print the table; unless --no-write, draw the plot and rewrite the section."""
    print(text_table(CELL_HEADERS, cell_rows(cells)))
    print("\n".join(meta["notes"]))
    body = render(cells, experiment_runs(), args, meta)
    if not args.no_write:
        write_section("train", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
