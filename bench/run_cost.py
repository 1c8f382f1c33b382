"""Whole-run cost of a default training run, before and after the validated presets (issue 11's CPU bound).

    python -m bench.run_cost [--datasets ml-100k-mm,ml-100k-mm-sparse] [--backbone freedom] [--seeds 1,2]
                             [--threads 1] [--no-write]

What a user pays for `mrdib train --backbone B --mrdib` to early stop: the run as configured BEFORE the
validated presets (`validated_defaults: false`: TrainConfig's field defaults, i.e. the plug-in's original
settings) and AFTER (the preset of training/presets.py), on the same data, seeds, machine and thread count,
the two interleaved seed by seed so that load drifts hit both. Reported per run: epochs to early stop, total
seconds (training + validation + checkpoints, the trainer's own clock), seconds per epoch, CPU seconds of the
run, and test Recall@20; then the after/before ratio of the median seconds per dataset.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._report import command, machine, md_table, now, write_section

SETTINGS = {"before": {"validated_defaults": False}, "after": {}}
HEADERS = ["dataset", "settings", "seed", "epochs run", "best epoch", "seconds", "s/epoch", "CPU s", "test R@20"]


def shared(name: str) -> Path | None:
    from bench.train import shared_data

    root = shared_data()
    return None if root is None else root / name


def run_one(data: Path, backbone: str, setting: str, seed: int, threads: int, out: Path) -> dict:
    """Train in a fresh process (its own CPU clock); returns metrics.json plus the child's CPU seconds."""
    overrides = {"backbone.name": backbone, "mrdib.enabled": True, "seed": seed, "device": "cpu", "data": str(data),
                 "threads": threads, **SETTINGS[setting]}  # fmt: skip
    code = (
        "import json, sys\n"
        "from training.config import load_config\n"
        "from training.experiment import resolve_dataset\n"
        "from training.trainer import train\n"
        "cfg = load_config(None, json.loads(sys.argv[1]))\n"
        "train(cfg, resolve_dataset(sys.argv[2]), sys.argv[3], progress=False, curves=False)\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code, json.dumps(overrides), str(data), str(out)], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    m["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # sparse data gets training/presets.py PRESETS, denser data (ml-100k-mm) DENSE_PRESETS: name it to measure those
    ap.add_argument("--datasets", default="ml-100k-mm-sparse")
    ap.add_argument("--backbone", default="freedom")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, ratios = [], []
    with tempfile.TemporaryDirectory(prefix="bench-run-cost-") as tmp:
        for name in args.datasets.split(","):
            data = shared(name)
            if data is None or not data.is_dir():
                print(f"skipping {name}: shared data not found", file=sys.stderr)
                continue
            secs: dict[str, list[float]] = {"before": [], "after": []}
            for seed in seeds:
                for setting in ("before", "after"):
                    out = Path(tmp) / f"{name}-{setting}-{seed}"
                    m = run_one(data, args.backbone, setting, seed, args.threads, out)
                    secs[setting].append(m["seconds"])
                    rows.append([name, setting, seed, m["epochs_run"], m["best_epoch"] + 1, f"{m['seconds']:.0f}",
                                 f"{m['seconds'] / m['epochs_run']:.2f}", f"{m['cpu_s']:.0f}",
                                 f"{m['test']['recall@20']:.4f}"])  # fmt: skip
                    print(" | ".join(map(str, rows[-1])), flush=True)
            ratio = statistics.median(secs["after"]) / statistics.median(secs["before"])
            ratios.append(f"{name}: after / before median seconds per run = {ratio:.2f}x")
    body = "\n".join([
        f"## Training cost per run: {args.backbone}+MRdIB with its validated preset vs the previous defaults",
        "",
        f"- command: `{command()}`",
        f"- date: {now()}; machine: {machine()}",
        "- protocol: `mrdib train --backbone B --mrdib` to early stop as configured BEFORE the presets "
        "(`validated_defaults: false`: the field defaults) and AFTER (training/presets.py), each run in a fresh "
        f"process with {args.threads} torch thread(s), before/after interleaved per seed. seconds = the trainer's "
        "own total (training, validation and checkpoint writes); CPU s = the child process's user + system time.",
        "- noise: the machine is shared with other engineers' jobs; compare within this table.",
        "- dense data (more than training/presets.py SPARSE_LIMIT training interactions per user, e.g. ml-100k-mm) "
        "gets the dense presets (DENSE_PRESETS); a table without it did not measure them (`--datasets ml-100k-mm`).",
        "",
        md_table(HEADERS, rows),
        "",
        *(f"- {r}" for r in ratios),
    ])
    print(body)
    if not args.no_write:
        write_section("run-cost", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
