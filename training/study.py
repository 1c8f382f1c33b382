"""`mrdib study`: the fair with/without-MRdIB comparison behind docs/RESULTS.md's model-quality tables.

What makes it fair (and what `mrdib experiment`'s fixed-grid ablation tables do not promise):

- Equal tuning budget. Every row (a backbone as it is, "plain"; with the content path of the plug-in but
  every MRdIB objective off, "content"; with the full plug-in, "mrdib") gets the SAME number of validation
  trials: a seeded random sample, without repetition, of that row's own search space (the shared space,
  the backbone's space, and for the content/mrdib rows the content and MRdIB spaces). Trial 0 is always
  the row's starting configuration (base + fixed overrides), so a search never does worse on validation
  than the untuned row. Selection reads VALIDATION Recall@20 only (`base.valid_metric`).
- Seeds. The winner of each row is retrained with every seed in `seeds` (the tuning run is reused when
  its seed is one of them); the table reports test metrics at each run's best-validation epoch.
- Significance. "content" vs "plain", "mrdib" vs "plain" and "mrdib" vs "content" are compared with a
  paired per-user bootstrap of the test metric (training/evaluation/bootstrap.py), seeds pooled; a
  difference whose 95% interval includes 0 is written "not shown".

The study file (YAML; see configs/study-*.yaml):

    name: sparse                        # section marker in docs/RESULTS.md and run folder name
    datasets: [../shared/data/ml-100k-mm-sparse]
    backbones: [bpr, lightgcn, vbpr, freedom, mgcn]
    variants: [plain, content, mrdib]
    trials: 8                           # validation trials per row
    tune_seed: 1                        # training seed of the trials
    seeds: [1, 2, 3, 4, 5]              # final runs of each winner
    search_seed: 0                      # seed of the random sampling of the trials
    base: {epochs: 300, threads: 1}     # TrainConfig fields for every run
    fixed: {vbpr: {...}}                # per-backbone dotted overrides for every run of that backbone
    start: {vbpr: {mrdib: {...}}}       # per-row starting point (e.g. another split's winner), under the trials
    space: {lr: [1e-3, 5e-3], ...}      # dotted key -> choices, every row
    backbone_space: {freedom: {...}}    # per backbone
    content_space: {...}                # content and mrdib rows
    mrdib_space: {...}                  # mrdib rows only
    jobs: 2                             # runs trained at once (processes, one torch thread each)

Runs live in `out/NAME/<dataset>/<backbone>/<variant>/trial<k>/seed<s>`; a folder whose metrics.json exists
is reused, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shlex
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from training.evaluation.bootstrap import Difference, paired_bootstrap

Variant = Literal["plain", "content", "mrdib"]
#: the plug-in with every MRdIB objective off: what "content" means
CONTENT_ONLY = {
    "mrdib.enabled": True,
    "mrdib.use_ib": False,
    "mrdib.use_unique": False,
    "mrdib.use_redundant": False,
    "mrdib.use_synergy": False,
}
VARIANT_OVERRIDES: dict[str, dict[str, Any]] = {
    "plain": {"mrdib.enabled": False},
    "content": CONTENT_ONLY,
    "mrdib": {"mrdib.enabled": True},
}
LABELS = {"plain": "", "content": " +content", "mrdib": " +MRdIB"}
COMPARED = (("content", "plain"), ("mrdib", "plain"), ("mrdib", "content"))
REPORTED = ("recall@20", "ndcg@20")


class StudyConfig(BaseModel):
    """The study file; unknown keys are errors so that a typo cannot silently change a study."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    datasets: list[str] = Field(min_length=1)
    backbones: list[str] = Field(min_length=1)
    variants: list[Variant] = Field(default_factory=lambda: ["plain", "content", "mrdib"], min_length=1)
    trials: int = Field(8, ge=1)
    tune_seed: int = 1
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    search_seed: int = 0
    base: dict[str, Any] = Field(default_factory=dict)
    fixed: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: backbone -> variant -> dotted overrides: where that row starts (its trial 0), e.g. the winner of the same
    #: row on another split; the trial points are drawn around it exactly as around `fixed`
    start: dict[str, dict[Variant, dict[str, Any]]] = Field(default_factory=dict)
    space: dict[str, list[Any]] = Field(default_factory=dict)
    backbone_space: dict[str, dict[str, list[Any]]] = Field(default_factory=dict)
    content_space: dict[str, list[Any]] = Field(default_factory=dict)
    mrdib_space: dict[str, list[Any]] = Field(default_factory=dict)
    bootstrap_resamples: int = Field(2000, ge=100)
    jobs: int = Field(1, ge=1)
    out: str = "runs/studies"
    results: str = "docs/RESULTS.md"
    cache_dir: str = "runs/cache"

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v


def load_study(path: Path) -> StudyConfig:
    from training.experiment import load_yaml_model

    return load_yaml_model(path, StudyConfig, "study", lambda s: s.backbones)


# --- the plan: rows, their search spaces, their trials ---------------------------------------------


@dataclass(frozen=True)
class Row:
    backbone: str
    variant: str

    @property
    def label(self) -> str:
        return self.backbone + LABELS[self.variant]


def row_space(study: StudyConfig, row: Row) -> dict[str, list[Any]]:
    """Dotted key -> choices searched for this row (later layers win on a shared key).

    `mrdib.content_at` is dropped for backbones that do not propagate items (BPR-MF, VBPR): for them both
    places are the same model, and searching it would only spend their trials twice on one point."""
    from training.models.registry import BACKBONES

    space = {**study.space, **study.backbone_space.get(row.backbone, {})}
    if row.variant in ("content", "mrdib"):
        space.update(study.content_space)
    if row.variant == "mrdib":
        space.update(study.mrdib_space)
    backbone = BACKBONES.get(row.backbone)
    if backbone is not None and not backbone.propagates_items:
        space.pop("mrdib.content_at", None)
    return space


def _rng(*parts: object) -> np.random.Generator:
    """A generator seeded by a stable hash of `parts` (Python's hash() is salted per process)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def sample_trials(space: dict[str, list[Any]], n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Trial 0 = {} (the row's starting point), then up to n - 1 distinct random points of the product.

    Points are drawn uniformly and without repetition; a space with fewer points than n is enumerated."""
    keys = sorted(space)
    sizes = [len(space[k]) for k in keys]
    total = math.prod(sizes) if keys else 0
    if total <= n - 1:
        combos = itertools.product(*(range(s) for s in sizes)) if keys else iter(())
        picks = [list(c) for c in combos]
    else:
        seen: set[tuple[int, ...]] = set()
        picks = []
        while len(picks) < n - 1:
            c = tuple(int(rng.integers(s)) for s in sizes)
            if c not in seen:
                seen.add(c)
                picks.append(list(c))
    return [{}] + [{k: space[k][i] for k, i in zip(keys, c, strict=True)} for c in picks]


def row_trials(study: StudyConfig, spec: str, row: Row) -> list[dict[str, Any]]:
    rng = _rng(study.search_seed, dataset_slug(spec), row.backbone, row.variant)
    return sample_trials(row_space(study, row), study.trials, rng)


def run_overrides(study: StudyConfig, spec: str, row: Row, point: dict[str, Any], seed: int) -> dict[str, Any]:
    """Dotted overrides of one run: backbone, fixed, variant, row start, trial point, seed, data (later wins)."""
    return {
        "backbone.name": row.backbone,
        **study.fixed.get(row.backbone, {}),
        **VARIANT_OVERRIDES[row.variant],
        **study.start.get(row.backbone, {}).get(row.variant, {}),
        **point,
        "seed": seed,
        "data": spec,
    }


def run_config(study: StudyConfig, spec: str, row: Row, point: dict[str, Any], seed: int) -> dict[str, Any]:
    """The full TrainConfig mapping of one run: a copy of `base` with `run_overrides` laid over it."""
    from training.config import set_dotted

    return set_dotted(json.loads(json.dumps(study.base)), run_overrides(study, spec, row, point, seed))


def dataset_slug(spec: str) -> str:
    from training.experiment import dataset_slug as slug

    return slug(spec)


# --- running ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One training run: its folder and its full configuration (as a dict, so it pickles to a worker)."""

    run_dir: str
    config: dict[str, Any]
    cache_dir: str


_DATASETS: dict[str, Any] = {}


FAILED = "failed.json"


def _train_job(job: Job) -> dict:
    """Worker entry point: train (or reuse) one run; returns its metrics.json.

    A run that diverges (the trainer raises FloatingPointError on a non-finite loss) is a legitimate outcome
    of a random trial, not a reason to stop the study: it is recorded in failed.json and scores -inf."""
    from training.config import TrainConfig
    from training.experiment import _run_one, resolve_dataset

    cfg = TrainConfig.model_validate(job.config)
    assert cfg.data is not None
    if cfg.data not in _DATASETS:
        _DATASETS[cfg.data] = resolve_dataset(cfg.data, job.cache_dir)
    try:
        return _run_one(cfg, _DATASETS[cfg.data], Path(job.run_dir), curves=False)
    except FloatingPointError as e:
        failed = {"failed": str(e), "valid_metric": cfg.valid_metric, "valid": {cfg.valid_metric: -math.inf}}
        (Path(job.run_dir) / FAILED).write_text(json.dumps(failed), encoding="utf-8")
        return failed


def _finished(job: Job) -> dict | None:
    for name in ("metrics.json", FAILED):
        path = Path(job.run_dir) / name
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


def run_jobs(jobs: list[Job], n_workers: int, log: Callable[[str], None]) -> list[dict]:
    """Train every job not finished yet (in n_workers processes), return all metrics in job order."""
    results: list[dict | None] = [_finished(j) for j in jobs]
    todo = [i for i, r in enumerate(results) if r is None]
    if not todo:
        return [r for r in results if r is not None]
    log(f"{len(todo)} runs to train ({len(jobs) - len(todo)} reused), {n_workers} at a time")
    if n_workers == 1:
        for i in todo:
            results[i] = _train_job(jobs[i])
            log(_describe(jobs[i], results[i]))
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_train_job, jobs[i]): i for i in todo}
            for fut in as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                log(_describe(jobs[i], results[i]))
    return [r for r in results if r is not None]


def _describe(job: Job, m: dict | None) -> str:
    assert m is not None
    rel = os.path.relpath(job.run_dir)
    if "failed" in m:
        return f"{rel}: FAILED ({m['failed']})"
    valid = m["valid"][m["valid_metric"]]
    return f"{rel}: valid {valid:.4f} test recall@20 {m['test']['recall@20']:.4f} ({m['seconds']:.0f}s)"


def study_jobs(
    study: StudyConfig, spec: str, row: Row, points: dict[int, dict[str, Any]], seeds: Iterable[int]
) -> list[Job]:
    """One job per (trial, seed); `points` maps each trial's index to its point, so a winner's final runs land
    in its own trial<k>/ folder (where its tuning run is reused), never in another trial's."""
    root = Path(study.out) / study.name / dataset_slug(spec) / row.backbone / row.variant
    jobs = []
    for k, point in points.items():
        for s in seeds:
            jobs.append(Job(str(root / f"trial{k}" / f"seed{s}"), run_config(study, spec, row, point, s),
                            study.cache_dir))
    return jobs


@dataclass
class RowResult:
    row: Row
    trial: int  # index of the winning trial
    point: dict[str, Any]
    valid: float  # winner's validation metric at tune_seed
    trial_valid: list[float]
    runs: list[dict]  # metrics.json of the winner's final seeds
    run_dirs: list[Path]


def run_study(study: StudyConfig, config_path: Path, log: Callable[[str], None] = print) -> dict[str, list[RowResult]]:
    """Tune every row (equal budget), retrain winners with every seed, write the RESULTS.md section."""
    rows = [Row(b, v) for b in study.backbones for v in study.variants]
    t0 = time.perf_counter()
    out: dict[str, list[RowResult]] = {}
    for spec in study.datasets:
        trials = {row: row_trials(study, spec, row) for row in rows}
        tune_jobs = {row: study_jobs(study, spec, row, dict(enumerate(trials[row])), [study.tune_seed]) for row in rows}
        flat = [j for row in rows for j in tune_jobs[row]]
        metrics = iter(run_jobs(flat, study.jobs, log))
        winners: dict[Row, tuple[int, list[float]]] = {}
        for row in rows:
            valids = [m["valid"][m["valid_metric"]] for m in (next(metrics) for _ in tune_jobs[row])]
            winners[row] = (int(np.argmax(valids)), valids)  # first of equal scores: the simplest point
        # the winner's final runs live beside its tuning run (trial<k>/seed<s>): the tune_seed one is reused
        final = {
            row: study_jobs(study, spec, row, {winners[row][0]: trials[row][winners[row][0]]}, study.seeds)
            for row in rows
        }
        flat = [j for row in rows for j in final[row]]
        metrics = iter(run_jobs(flat, study.jobs, log))
        out[spec] = []
        for row in rows:
            k, valids = winners[row]
            done = [(m, Path(j.run_dir)) for j, m in ((j, next(metrics)) for j in final[row]) if "failed" not in m]
            if done:  # a winner whose every seed diverged has nothing to report (render() says so)
                runs, dirs = [m for m, _ in done], [d for _, d in done]
                out[spec].append(RowResult(row, k, trials[row][k], valids[k], valids, runs, dirs))
    section = render(study, config_path, out, time.perf_counter() - t0)
    from mrdib.doc_sections import replace_section

    replace_section(Path(study.results), "study", study.name, section, header="# Results\n")
    summary = Path(study.out) / study.name / "summary.json"
    summary.write_text(json.dumps(summarise(study, out), indent=2, default=str), encoding="utf-8")
    log(f"wrote {study.results} (section study:{study.name}) and {summary}")
    return out


# --- comparisons and the report --------------------------------------------------------------------


def per_user(result: RowResult, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(users, [n_seeds, n_users] metric) of a row's final runs; every seed must have the same users."""
    from training.checkpoint import load_per_user

    users, values = None, []
    for d in result.run_dirs:
        pu = load_per_user(d)
        if users is None:
            users = pu["users"]
        elif not np.array_equal(users, pu["users"]):
            raise ValueError(f"{d}: evaluated users differ between seeds of {result.row.label}")
        values.append(pu[metric])
    assert users is not None
    return users, np.stack(values)


def compare(a: RowResult, b: RowResult, metric: str, resamples: int, seed: int = 0) -> Difference:
    ua, va = per_user(a, metric)
    ub, vb = per_user(b, metric)
    if not np.array_equal(ua, ub):
        raise ValueError(f"{a.row.label} and {b.row.label} were evaluated on different users")
    return paired_bootstrap(va, vb, resamples=resamples, seed=seed)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def _point(point: dict[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('backbone.').removeprefix('params.')}={v}" for k, v in point.items()) or "start"


def render(study: StudyConfig, config_path: Path, out: dict[str, list[RowResult]], seconds: float) -> str:
    import datetime as _dt

    from training.experiment import machine

    date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Study `{study.name}`",
        "",
        f"- Command: `mrdib study --config {shlex.quote(str(config_path))}`",
        f"- Machine: {machine()}; date: {date}; wall time {seconds / 60:.0f} min (finished runs are reused).",
        f"- Budget: {study.trials} validation trials per row (trial 0 = the row's starting configuration, then a "
        f"seeded random sample of its search space without repetition), training seed {study.tune_seed}; "
        f"selection on VALIDATION {study.base.get('valid_metric', 'recall@20')} only. Winners retrained with "
        f"seeds {study.seeds}; numbers are TEST metrics at each run's best-validation epoch, mean ± sample std "
        "over seeds.",
        f"- Differences: paired per-user bootstrap ({study.bootstrap_resamples} resamples, 95% percentile "
        "interval) of the seed-averaged per-user difference; 'not shown' where the interval includes 0.",
        f"- Search spaces and fixed settings: `{config_path}`."
        + (" Each row starts (trial 0) at its own `start:` point from that file." if study.start else ""),
    ]
    for spec, results in out.items():
        by = {(r.row.backbone, r.row.variant): r for r in results}
        lines += ["", f"### {spec}", ""]
        lines.append("| row | selected (valid R@20) | test R@20 | test N@20 | R@20 vs plain | R@20 vs content | "
                     "N@20 vs plain | N@20 vs content | best epoch | s/run |")  # fmt: skip
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            failed = len(study.seeds) - len(r.runs)
            cells = [f"{_point(r.point)} ({r.valid:.4f})" + (f"; {failed} seed(s) diverged" if failed else "")]
            for k in REPORTED:
                m, s = _mean_std([x["test"][k] for x in r.runs])
                cells.append(f"{m:.4f} ± {s:.4f}")
            for k in REPORTED:
                for other in ("plain", "content"):
                    ref = by.get((r.row.backbone, other))
                    if ref is None or other == r.row.variant or (r.row.variant, other) not in COMPARED:
                        cells.append("")
                    else:
                        cells.append(compare(r, ref, k, study.bootstrap_resamples).describe())
            # column order: R@20 vs plain, R@20 vs content, N@20 vs plain, N@20 vs content
            cells.append(f"{_mean_std([x['best_epoch'] + 1.0 for x in r.runs])[0]:.0f}")
            cells.append(f"{_mean_std([float(x['seconds']) for x in r.runs])[0]:.0f}")
            lines.append(f"| {r.row.label} | " + " | ".join(cells) + " |")
        missing = [f"{b}{LABELS[v]}" for b in study.backbones for v in study.variants if (b, v) not in by]
        if missing:
            lines += ["", f"Every seed of the winner diverged (no numbers): {', '.join(missing)}."]
        best = max(results, key=lambda r: _mean_std([x["test"]["recall@20"] for x in r.runs])[0])
        lines += ["", f"Best row by mean test Recall@20: **{best.row.label}**."]
    return "\n".join(lines) + "\n"


#: run settings, not model settings: never part of a preset
RUN_KEYS = ("data", "seed", "out", "device", "threads", "topk", "valid_metric", "epochs", "validated_defaults")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def preset_of(study: StudyConfig, spec: str, row: Row, point: dict[str, Any]) -> dict[str, Any]:
    """A row's winning configuration as training/presets.py holds it: the dotted settings in which the run
    differs from TrainConfig's defaults (backbone and plug-in switch, run settings, and a plain row's unused
    plug-in settings left out). Written into summary.json, so a preset is copied from there, not retyped."""
    from training.config import TrainConfig

    cfg = TrainConfig.model_validate(run_config(study, spec, row, point, study.tune_seed))
    default = TrainConfig.model_validate({"backbone": {"name": row.backbone}})
    mine, theirs = _flat(cfg.model_dump(mode="json")), _flat(default.model_dump(mode="json"))
    skip = {"backbone.name", "mrdib.enabled", *RUN_KEYS}
    plugin_off = not cfg.mrdib.enabled  # a plain row: the plug-in's settings are not part of its model
    return {k: v for k, v in sorted(mine.items())
            if k not in skip and theirs.get(k) != v and not (plugin_off and k.startswith("mrdib."))}


def summarise(study: StudyConfig, out: dict[str, list[RowResult]]) -> dict:
    return {
        spec: {
            r.row.label: {
                "trial": r.trial,
                "point": r.point,
                "preset": preset_of(study, spec, r.row, r.point),
                "valid": r.valid,
                "trial_valid": r.trial_valid,
                "test": {k: _mean_std([x["test"][k] for x in r.runs]) for k in REPORTED},
                "runs": [str(d) for d in r.run_dirs],
            }
            for r in results
        }
        for spec, results in out.items()
    }
