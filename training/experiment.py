"""`mrdib experiment`: the with/without-MRdIB comparison and the ablation table, end to end.

One YAML file describes the whole study (see configs/experiment-ml100k.yaml):

    name: ml100k                       # section marker in docs/RESULTS.md, run folder name
    datasets: [../shared/data/ml-100k-mm, "synth:small"]
    backbones: [bpr, lightgcn, freedom]
    seeds: [1, 2, 3]
    ablations: [no_ib, no_unique, no_redundant, no_synergy]
    ablation_backbones: [freedom]      # default: every backbone
    base: {epochs: 200, patience: 20}  # TrainConfig fields shared by every run (nested mapping)
    overrides: {freedom: {"backbone.params.knn_k": 10}}   # per-backbone dotted overrides
    grid: {"mrdib.beta": [1e-4, 1e-3]} # small grid per row, the winner chosen by VALIDATION
    grid_seeds: 1                      # the first n seeds decide the grid winner

Rows per dataset: for every backbone "plain" and "+MRdIB", plus the ablation rows (MRdIB with one
term switched off). Every (row, grid point, seed) is one `trainer.train` run in its own folder; a
folder whose metrics.json exists is skipped, and one with a resume/ state but no metrics.json is
resumed, so an interrupted experiment continues where it stopped.

Reported numbers are TEST metrics at each run's best-validation epoch, mean ± sample std over
seeds; grid points are compared on the mean VALIDATION metric only. The markdown goes between
`<!-- experiment:NAME -->` and `<!-- /experiment:NAME -->` in docs/RESULTS.md (other sections of
that file belong to others and are left untouched), the bar chart to docs/experiment-NAME.png.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mrdib.doc_sections import replace_section
from training.data.dataset import DataError, InteractionDataset

Ablation = Literal["no_ib", "no_unique", "no_redundant", "no_synergy"]
ABLATION_FLAGS: dict[str, tuple[str, str]] = {
    "no_ib": ("mrdib.use_ib", "w/o IB"),
    "no_unique": ("mrdib.use_unique", "w/o unique"),
    "no_redundant": ("mrdib.use_redundant", "w/o redundant"),
    "no_synergy": ("mrdib.use_synergy", "w/o synergy"),
}
REPORTED = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
SYNTH_PREFIX = "synth:"


class ExperimentConfig(BaseModel):
    """The experiment file; unknown keys are errors so typos do not silently change a study."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    datasets: list[str] = Field(min_length=1)
    backbones: list[str] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    ablations: list[Ablation] = Field(default_factory=lambda: list(ABLATION_FLAGS))
    ablation_backbones: list[str] | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    grid_seeds: int = Field(1, ge=1)
    out: str = "runs/experiments"
    results: str = "docs/RESULTS.md"
    figure_dir: str = "docs"
    cache_dir: str = "runs/cache"
    curves: bool = Field(True, description="write each run's curves.png (about a second per run)")

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v

    @field_validator("grid")
    @classmethod
    def _grid_nonempty(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for k, vals in v.items():
            if not vals:
                raise ValueError(f"grid[{k!r}] has no values")
        return v


M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: Path, model: type[M], what: str, backbones: Callable[[M], list[str]]) -> M:
    """A YAML file validated as `model`; every error (missing file, not a mapping, invalid field, unknown
    backbone among `backbones(config)`) is a ValueError naming the file. Shared by experiments and studies."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: {what} config not found")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    try:
        cfg = model.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"{path}: {e}") from None
    from training.config import BackboneConfig

    known = BackboneConfig.model_fields["name"].annotation.__args__  # the BackboneName Literal
    for b in backbones(cfg):
        if b not in known:
            raise ValueError(f"{path}: unknown backbone {b!r}; known: {list(known)}")
    return cfg


def load_experiment(path: Path) -> ExperimentConfig:
    return load_yaml_model(path, ExperimentConfig, "experiment", lambda e: e.backbones + (e.ablation_backbones or []))


# --- datasets ------------------------------------------------------------------------------------


def resolve_dataset(spec: str, cache_dir: Path | str = "runs/cache") -> InteractionDataset:
    """A dataset folder (MMRec or MovieLens layout), or `synth:<preset>` generated once into cache_dir.

    Generation writes to a private temporary folder and renames it into place, so concurrent
    processes (DDP ranks, parallel experiments) never read a half-written catalogue.
    """
    from training.data.load import load_dataset
    from training.data.mmrec import load_mmrec

    if not spec.startswith(SYNTH_PREFIX):
        return load_dataset(Path(spec))
    from training.data.synth import SynthConfig, generate_synthetic

    preset = spec[len(SYNTH_PREFIX) :]
    try:
        scfg = SynthConfig.preset(preset)  # type: ignore[arg-type]
    except ValueError as e:
        raise DataError(f"{spec}: {e}") from None
    folder = Path(cache_dir) / f"synth-{preset}"
    if not (folder / "synth_config.json").is_file():
        tmp = Path(cache_dir) / f".tmp-synth-{preset}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        generate_synthetic(scfg, tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return load_mmrec(folder)


def dataset_slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "-", spec.replace(SYNTH_PREFIX, "synth-").rstrip("/").split("/")[-1])


# --- the run plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the table: a backbone with a variant ("plain", "mrdib" or an ablation name)."""

    backbone: str
    variant: str

    @property
    def label(self) -> str:
        if self.variant == "plain":
            return self.backbone
        if self.variant == "mrdib":
            return f"{self.backbone} +MRdIB"
        return f"{self.backbone} +MRdIB {ABLATION_FLAGS[self.variant][1]}"

    def overrides(self) -> dict[str, Any]:
        o: dict[str, Any] = {"backbone.name": self.backbone, "mrdib.enabled": self.variant != "plain"}
        if self.variant in ABLATION_FLAGS:
            o[ABLATION_FLAGS[self.variant][0]] = False
        return o


def plan_rows(exp: ExperimentConfig) -> list[Row]:
    rows = []
    ablate = exp.backbones if exp.ablation_backbones is None else exp.ablation_backbones
    for b in exp.backbones:
        rows += [Row(b, "plain"), Row(b, "mrdib")]
        if b in ablate:
            rows += [Row(b, a) for a in exp.ablations]
    return rows


def grid_points(exp: ExperimentConfig, row: Row) -> list[dict[str, Any]]:
    """The grid's cartesian product; MRdIB keys are dropped for plain rows (they would change nothing)."""
    keys = [k for k in exp.grid if row.variant != "plain" or not k.startswith("mrdib.")]
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(exp.grid[k] for k in keys))]


def grid_slug(point: dict[str, Any]) -> str:
    if not point:
        return "default"
    return "_".join(f"{k.split('.')[-1]}={v}" for k, v in point.items()).replace("/", "-")


def run_config(exp: ExperimentConfig, spec: str, row: Row, point: dict[str, Any], seed: int):
    """The TrainConfig of one run: base, then per-backbone overrides, then the row, grid point and seed."""
    from training.config import TrainConfig, set_dotted

    data: dict[str, Any] = json.loads(json.dumps(exp.base))  # deep copy
    dotted = {**exp.overrides.get(row.backbone, {}), **row.overrides(), **point, "seed": seed, "data": spec}
    return TrainConfig.model_validate(set_dotted(data, dotted))


# --- running -------------------------------------------------------------------------------------


def _run_one(cfg, dataset: InteractionDataset, run_dir: Path, curves: bool = True) -> dict:
    """Train (or resume, or skip) one run; returns its metrics.json."""
    from training.trainer import train

    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text(encoding="utf-8"))
    resume = (run_dir / "resume" / "state.json").is_file()
    train(cfg.model_copy(update={"out": str(run_dir)}), dataset, run_dir, resume=resume, progress=False, curves=curves)
    return json.loads(metrics_path.read_text(encoding="utf-8"))


def _run_logged(exp, spec, dataset, row: Row, run_dirs: dict, point: dict[str, Any], seed: int, console) -> dict:
    t = time.perf_counter()
    m = _run_one(run_config(exp, spec, row, point, seed), dataset, run_dirs[(grid_slug(point), seed)], exp.curves)
    console.print(
        f"[{dataset_slug(spec)}] {row.label:<34} {grid_slug(point):<24} seed {seed}: "
        f"valid {m['valid_metric']}={m['valid'][m['valid_metric']]:.4f} "
        f"test recall@20={m['test']['recall@20']:.4f} ({time.perf_counter() - t:.1f}s)",
        highlight=False,
    )
    return m


def _summarise(row: Row, point: dict[str, Any], ms: list[dict]) -> dict:
    """One table row from its runs' metrics.json."""
    return {
        "row": {"backbone": row.backbone, "variant": row.variant},
        "point": point,
        "n_seeds": len(ms),
        "test": {k: _mean_std([m["test"][k] for m in ms]) for k in REPORTED},
        "valid": {k: _mean_std([m["valid"][k] for m in ms]) for k in REPORTED},
        "best_epoch": _mean_std([float(m["best_epoch"] + 1) for m in ms]),
        "seconds": _mean_std([float(m["seconds"]) for m in ms]),
        "device": ms[0].get("device", "?"),
    }


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def run_experiment(
    exp: ExperimentConfig,
    config_path: Path,
    only: list[str] | None = None,
    dry_run: bool = False,
    report_only: bool = False,
) -> dict:
    """Run every planned run (skipping finished ones), then write the RESULTS.md section and the chart.

    Returns the summary: {dataset: {row label: {"point", "valid", "test": {metric: [mean, std]}, ...}}}.
    `report_only` trains nothing: it writes the section from the runs that already finished (rows with fewer
    seeds than planned say so in their label; rows with none, and rows whose grid is unfinished, are left out),
    for reporting a study that the compute budget cut short.
    """
    from rich.console import Console

    console = Console(stderr=True)
    rows = [r for r in plan_rows(exp) if not only or any(o in r.label for o in only)]
    root = Path(exp.out) / exp.name
    summary: dict[str, dict[str, dict]] = {}
    t0 = time.perf_counter()
    for spec in exp.datasets:
        dataset = None if dry_run or report_only else resolve_dataset(spec, exp.cache_dir)
        summary[spec] = {}
        for row in rows:
            points = grid_points(exp, row)
            run_dirs = {
                (grid_slug(p), s): root / dataset_slug(spec) / row.backbone / row.variant / grid_slug(p) / f"seed{s}"
                for p in points
                for s in exp.seeds
            }
            if dry_run:
                for d in run_dirs.values():
                    print(f"{row.label:<36} {d}")  # plain print: one line per run, never wrapped
                continue

            if report_only:
                def finished(point: dict[str, Any], seeds: list[int], dirs: dict = run_dirs) -> list[dict]:
                    files = [dirs[(grid_slug(point), s)] / "metrics.json" for s in seeds]
                    return [json.loads(f.read_text(encoding="utf-8")) for f in files if f.is_file()]

                # Same rule as a full run: the grid winner by mean VALIDATION metric over the first
                # `grid_seeds` seeds, among the points whose grid runs all finished.
                first = exp.seeds[: exp.grid_seeds]
                scored = [(p, finished(p, first)) for p in points]
                scored = [(p, ms) for p, ms in scored if len(ms) == len(first)] if len(points) > 1 else scored
                if not scored:
                    continue
                def mean_valid(pm: tuple[dict[str, Any], list[dict]]) -> float:
                    return _mean_std([m["valid"][m["valid_metric"]] for m in pm[1]] or [0.0])[0]

                point, _ = max(scored, key=mean_valid)
                ms = finished(point, exp.seeds)
                if ms:
                    n, total = len(ms), len(exp.seeds)
                    label = row.label if n == total else f"{row.label} ({n}/{total} seeds)"
                    summary[spec][label] = _summarise(row, point, ms)
                continue

            def run(point: dict[str, Any], seed: int, ctx: tuple = (spec, dataset, row, run_dirs)) -> dict:
                return _run_logged(exp, *ctx, point, seed, console)

            # Grid winner by mean VALIDATION metric over the first `grid_seeds` seeds; test never looked at.
            best_point, best_valid = points[0], -math.inf
            if len(points) > 1:
                for point in points:
                    ms = [run(point, s) for s in exp.seeds[: exp.grid_seeds]]
                    v = _mean_std([m["valid"][m["valid_metric"]] for m in ms])[0]
                    if v > best_valid:
                        best_point, best_valid = point, v
            ms = [run(best_point, s) for s in exp.seeds]
            summary[spec][row.label] = _summarise(row, best_point, ms)
    if dry_run:
        return summary
    if only and not report_only:
        # A subset was trained; the section must still show every finished row, not just this subset.
        return run_experiment(exp, config_path, report_only=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    figure = Path(exp.figure_dir) / f"experiment-{exp.name}.png"
    _write_chart(summary, figure, exp.name)
    command = f"mrdib experiment --config {shlex.quote(str(config_path))}"
    if report_only:
        command += "  (report of the finished runs: run_experiment(..., report_only=True))"
    command += "".join(f" --only {shlex.quote(o)}" for o in only or [])
    section = render_section(exp, summary, command, figure, Path(exp.results), time.perf_counter() - t0)
    write_section(Path(exp.results), exp.name, section)
    console.print(f"wrote {exp.results} (section {exp.name}) and {figure}", highlight=False)
    return summary


# --- reporting -----------------------------------------------------------------------------------


def machine() -> str:
    """CPU model (lscpu), core count, GPU if any: enough to judge the timing columns."""
    model = platform.processor() or platform.machine()
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5, check=False).stdout
        found = re.search(r"^Model name:\s*(.+)$", text, re.MULTILINE)
        model = found.group(1).strip() if found else model
    except (OSError, subprocess.SubprocessError):
        pass
    desc = f"{model}, {os.cpu_count()} CPUs"
    try:
        import torch

        desc += f", torch {torch.__version__}"
        if torch.cuda.is_available():
            desc += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return desc


def _fmt(ms: tuple[float, float]) -> str:
    return f"{ms[0]:.4f} ± {ms[1]:.4f}"


def render_section(
    exp: ExperimentConfig, summary: dict, command: str, figure: Path, results: Path, seconds: float
) -> str:
    date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Experiment `{exp.name}`",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine()}; date: {date}; wall time {seconds / 60:.1f} min (finished runs are reused).",
        f"- Seeds: {exp.seeds}. Numbers: TEST metrics at each run's best-validation epoch (full ranking over all "
        "items, training items masked), mean ± sample std over seeds. Early stopping and every grid choice use "
        "the VALIDATION metric only.",
    ]
    if exp.grid:
        lines.append(
            f"- Grid per row: {exp.grid}, winner by mean validation over the first {exp.grid_seeds} seed(s) "
            "(column `grid`)."
        )
    if exp.base:
        lines.append(f"- Shared settings: `{json.dumps(exp.base)}`; per-backbone: `{json.dumps(exp.overrides)}`.")
    if len(exp.seeds) < 3:
        lines.append("- Fewer than 3 seeds: the spread is not a reliable estimate.")
    lines.append("- Gain: relative change of the row's mean over the same backbone's plain mean (Recall@20 / NDCG@20).")
    for spec, rows in summary.items():
        lines += ["", f"### {spec}", ""]
        lines.append(
            "| model | Recall@10 | Recall@20 | NDCG@10 | NDCG@20 | gain R@20 | gain N@20 | grid | best epoch | s/run |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for label, r in rows.items():
            key = {"backbone": r["row"]["backbone"], "variant": "plain"}
            plain = next((p for p in rows.values() if p["row"] == key), None)
            gains = []
            for k in ("recall@20", "ndcg@20"):
                if r["row"]["variant"] == "plain" or plain is None or plain["test"][k][0] == 0:
                    gains.append("")
                else:
                    gains.append(f"{100 * (r['test'][k][0] / plain['test'][k][0] - 1):+.1f}%")
            grid = ", ".join(f"{k}={v}" for k, v in r["point"].items()) or "-"
            cells = [_fmt(r["test"][k]) for k in REPORTED]
            lines.append(
                f"| {label} | {' | '.join(cells)} | {gains[0]} | {gains[1]} | {grid} | "
                f"{r['best_epoch'][0]:.0f} | {r['seconds'][0]:.1f} |"
            )
    rel = os.path.relpath(figure, results.parent)
    lines += ["", f"![Recall@20 per row, mean ± std over seeds]({rel})", ""]
    return "\n".join(lines)


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) only the text between this experiment's markers; the rest of the file is kept."""
    replace_section(Path(path), "experiment", name, body, header="# Results\n")


def _write_chart(summary: dict, path: Path, name: str) -> None:
    from training.plots import plot_bars

    labels, means, stds = [], [], []
    multi = len(summary) > 1
    for spec, rows in summary.items():
        for label, r in rows.items():
            labels.append(f"{dataset_slug(spec)}: {label}" if multi else label)
            means.append(r["test"]["recall@20"][0])
            stds.append(r["test"]["recall@20"][1])
    if labels:
        plot_bars(labels, means, stds, path, f"experiment {name}: test Recall@20", "Recall@20")
