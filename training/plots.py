"""Matplotlib figures the trainer and the experiment runner write (headless: the Agg backend).

Kept apart from the loop so that a run without matplotlib installed fails only at plotting time,
with a clear message, and so that the figures look the same wherever they are produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _null_formatter():
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def plot_curves(history: Sequence[dict], path: Path, valid_metric: str = "recall@20") -> Path:
    """Two panels: every loss term per epoch (log scale when positive) and the validation metric.

    `history` rows are the metrics.jsonl lines: {"epoch", "loss": {term: value}, "valid": {...} | None}.
    """
    plt = _pyplot()
    fig, (ax_loss, ax_valid) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [r["epoch"] + 1 for r in history]
    terms = sorted({k for r in history for k in r.get("loss", {})})
    positive = any(v > 0 for r in history for v in r.get("loss", {}).values())
    palette = plt.get_cmap("tab20").colors  # MRdIB logs a dozen terms: more than the default 10 colours
    for n, term in enumerate(terms):
        ys = [r["loss"].get(term, float("nan")) for r in history]
        if positive:  # log scale: terms span 1e-4..1e3; zero/negative points are left out, not clipped
            ys = [y if y > 0 else float("nan") for y in ys]
        color = "black" if term == "loss" else palette[n % len(palette)]
        ax_loss.plot(epochs, ys, label=term, lw=2.0 if term == "loss" else 1.0, color=color)
    if positive:
        ax_loss.set_yscale("log")
        ax_loss.yaxis.set_minor_formatter(_null_formatter())  # minor log labels cost seconds to lay out
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("training loss terms")
    if terms:
        ax_loss.legend(fontsize=6, ncol=2, loc="upper right", framealpha=0.6)
    pts = [(r["epoch"] + 1, r["valid"][valid_metric]) for r in history if r.get("valid")]
    if pts:
        xs, ys = zip(*pts, strict=True)
        ax_valid.plot(xs, ys, marker=".", color="tab:green")
        best = max(range(len(ys)), key=ys.__getitem__)
        ax_valid.axvline(xs[best], color="grey", ls="--", lw=1)
        ax_valid.set_title(f"validation {valid_metric} (best {ys[best]:.4f} @ epoch {xs[best]})")
    ax_valid.set_xlabel("epoch")
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.9, wspace=0.2)  # tight_layout: ~1 s per call
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bars(
    labels: Sequence[str], means: Sequence[float], stds: Sequence[float], path: Path, title: str, ylabel: str
) -> Path:
    """One bar per row (mean with a std error bar), used for the experiment summary chart."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(labels) + 2), 4.2))
    colors = ["tab:orange" if "+MRdIB" in lab else ("tab:gray" if "w/o" in lab else "tab:blue") for lab in labels]
    ax.bar(range(len(labels)), means, yerr=stds, color=colors, capsize=3)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
