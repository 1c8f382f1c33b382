"""`mrdib data ...`: build, convert, generate and inspect datasets.

Invalid data exits with code 2 (mrdib/exits.py) and the DataError message (file, line, problem) on stderr,
never a traceback: the person at the terminal needs to know which file to fix, not where we noticed.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from mrdib.cli_order import ordered_group
from mrdib.exits import fail
from training.data.build import BUILD_RECORD_FILE, BuildRecord, BuildResult, read_build_record
from training.data.dataset import DataError, InteractionDataset

app = typer.Typer(
    cls=ordered_group("build", "convert-grouplens", "synth", "inspect"),
    no_args_is_help=True,
    add_completion=False,
    help="Build, convert, generate and inspect datasets.",
)

_fail = fail  # exit 2 with the message (mrdib/exits.py)
_PRESET = "the preset's"  # what a synth option left out means


def summarize(ds: InteractionDataset) -> dict[str, Any]:
    """The numbers `inspect` prints, as a plain dict (also used by `--json`)."""
    counts = ds.counts()
    total = sum(counts.values())
    cells = ds.n_users * ds.n_items
    return {
        "name": ds.name,
        "users": ds.n_users,
        "items": ds.n_items,
        "interactions": counts,
        "total": total,
        "sparsity": 1.0 - total / cells if cells else 1.0,
        "users_with_train": int((ds.train_csr().getnnz(axis=1) > 0).sum()),
        "items_with_train": int((ds.item_popularity() > 0).sum()),
        "modalities": ds.feature_dims,
        "warnings": list(ds.warnings),
    }


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="Dataset folder (MMRec or MovieLens-100k layout)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Load a dataset folder (layout auto-detected), validate it and print its summary."""
    from training.data.load import load_dataset

    try:
        ds = load_dataset(path)
    except DataError as e:
        raise _fail(e) from None
    s = summarize(ds)
    try:
        record = read_build_record(path) if path.is_dir() else None
    except DataError as e:
        raise _fail(e) from None
    s["display_fields"] = sorted({k for m in ds.item_meta or [] for k in m})
    if record is not None:
        s["build"] = record.model_dump(mode="json")
        s["warnings"] += [f"when built: {w}" for w in record.warnings]
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{s['name']} ({path})", show_header=False)
    table.add_row("users", f"{s['users']:,}")
    table.add_row("items", f"{s['items']:,}")
    for split, n in s["interactions"].items():
        table.add_row(f"{split} interactions", f"{n:,}")
    table.add_row("total interactions", f"{s['total']:,}")
    table.add_row("sparsity", f"{s['sparsity']:.4%}")
    table.add_row("users / items with training data", f"{s['users_with_train']:,} / {s['items_with_train']:,}")
    for m, d in s["modalities"].items():
        table.add_row(f"modality {m}", f"dim {d}")
    if s["display_fields"]:
        table.add_row("display fields (item_meta.jsonl)", ", ".join(s["display_fields"]))
    console = Console()
    console.print(table)
    if record is not None:
        console.print(_record_table(record))
    for w in s["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")


def _record_table(record: BuildRecord):
    """How each feature block was made, from build_record.json (one row per block)."""
    from rich.table import Table

    t = Table(title=f"how the features were made ({BUILD_RECORD_FILE}, {record.created_at})")
    for col in ("modality", "columns", "kind", "dims", "made with", "filled"):
        t.add_column(col)
    for m, rec in record.modalities.items():
        for b in rec.blocks:
            made = ""
            if b.extractor:
                made = " ".join(str(b.extractor.get(k)) for k in ("name", "model") if b.extractor.get(k))
                version = b.extractor.get("model_package_version") or b.extractor.get("model_sha256", "")[:12]
                made += f" ({version})" if version else ""
            elif b.vocabulary is not None:
                more = ", ..." if len(b.vocabulary) > 4 else ""
                made = f"{len(b.vocabulary)} values: " + ", ".join(b.vocabulary[:4]) + more
            elif b.mean is not None:
                made = "standardised (mean, sample std in the record)"
            dims = f"{b.offset}..{b.offset + b.dim - 1}"
            t.add_row(m, ", ".join(b.columns), b.kind, dims, made, f"{b.filled} ({b.fill})" if b.filled else "0")
    for reason, n in record.dropped.items():
        t.add_row("", "", "dropped rows", "", reason, str(n))
    return t


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the MMRec-layout dataset into."),
    preset: str = typer.Option("small", help="Starting point: small, baby, synergy-heavy or synergy-sparse."),
    config: Path | None = typer.Option(
        None, help="YAML/JSON file with SynthConfig fields (applied after the preset).", show_default="none"),
    users: int | None = typer.Option(None, "--users", help="Number of users.", show_default=_PRESET),
    items: int | None = typer.Option(None, "--items", help="Number of items.", show_default=_PRESET),
    interactions: int | None = typer.Option(None, "--interactions", help="Total interactions.", show_default=_PRESET),
    modalities: int | None = typer.Option(
        None, "--modalities", help="Number of modalities (image, text, audio, m3, ...).", show_default=_PRESET),
    dims: str | None = typer.Option(
        None, "--dims", help="Comma-separated feature dims, one per modality.", show_default=_PRESET),
    seed: int | None = typer.Option(None, "--seed", help="Seed of everything generated.", show_default=_PRESET),
    synergy_strength: float | None = typer.Option(
        None, "--synergy-strength", help="Weight of synergy factors.", show_default=_PRESET),
    synergy_heavy: bool = typer.Option(False, "--synergy-heavy", help="Use the synergy-heavy factor mix."),
    n_redundant: int | None = typer.Option(
        None, "--redundant", help="Number of redundant factors.", show_default=_PRESET),
    n_unique: int | None = typer.Option(None, "--unique", help="Unique factors per modality.", show_default=_PRESET),
    n_synergy: int | None = typer.Option(None, "--synergy", help="Number of synergy factors.", show_default=_PRESET),
    n_noise: int | None = typer.Option(
        None, "--noise", help="Irrelevant latent dims per modality.", show_default=_PRESET),
    name: str | None = typer.Option(None, "--name", help="Dataset name (the .inter stem).", show_default=_PRESET),
) -> None:
    """Generate a synthetic catalogue with planted redundant/unique/synergistic factors (MMRec layout)."""
    import yaml
    from pydantic import ValidationError

    from training.data.synth import SYNERGY_HEAVY, SynthConfig, default_modalities, generate_synthetic

    overrides: dict[str, Any] = {}
    if config is not None:
        try:
            loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise _fail(DataError(f"{config}: cannot read synth config: {e}")) from None
        if not isinstance(loaded, dict):
            raise _fail(DataError(f"{config}: synth config must be a mapping of SynthConfig fields"))
        overrides.update(loaded)
    if synergy_heavy:
        overrides.update(SYNERGY_HEAVY)
    if modalities is not None:
        overrides["modalities"] = default_modalities(modalities)
        overrides.setdefault("dims", None)
    if dims is not None:
        try:
            overrides["dims"] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise _fail(DataError(f"--dims must be comma-separated integers, got {dims!r}")) from None
    cli = dict(
        n_users=users, n_items=items, n_interactions=interactions, seed=seed, synergy_strength=synergy_strength,
        n_redundant=n_redundant, n_unique=n_unique, n_synergy=n_synergy, n_noise=n_noise, name=name,
    )  # fmt: skip
    overrides.update({k: v for k, v in cli.items() if v is not None})
    try:
        cfg = SynthConfig.preset(preset, **overrides)  # type: ignore[arg-type]
    except (ValidationError, ValueError) as e:
        raise _fail(e) from None
    try:
        generate_synthetic(cfg, out)
    except (OSError, DataError) as e:
        raise _fail(e) from None
    typer.echo(
        f"wrote {out}: {cfg.n_users} users, {cfg.n_items} items, {cfg.n_interactions} interactions, "
        f"modalities {dict(zip(cfg.modalities, cfg.dims or [], strict=True))}"
    )


def _columns(values: list[str] | None) -> list[str]:
    """Column options accept repeats and commas: --text title --text description == --text title,description."""
    return [c.strip() for v in values or [] for c in v.split(",") if c.strip()]


def _progress_bars(enabled: bool):
    """A `Progress` hook for build_dataset drawing rich bars (or None), and the context that owns them."""
    if not enabled:
        return None, contextlib.nullcontext()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True)  # fmt: skip

    def hook(label: str, total: int):
        task = bars.add_task(label, total=total)
        return lambda n: bars.advance(task, n)

    return hook, bars


def _report(out: Path, result: BuildResult) -> None:
    ds, record = result.dataset, result.record
    c = ds.counts()
    typer.echo(
        f"wrote {out}: {ds.n_users} users, {ds.n_items} items, {c['train']}/{c['valid']}/{c['test']} "
        f"train/valid/test, modalities {ds.feature_dims}, display fields {list(record.display_fields)}"
    )
    for reason, n in record.dropped.items():
        if n:
            typer.echo(f"dropped {n} interaction row(s): {reason}")
    for w in record.warnings:
        typer.echo(f"warning: {w}", err=True)


@app.command()
def build(
    interactions: Path = typer.Option(..., "--interactions", help="Event log: CSV/TSV, Parquet or JSONL."),
    items: Path = typer.Option(..., "--items", help="Item table: CSV/TSV, Parquet or JSONL, one row per item."),
    out: Path = typer.Option(..., "--out", help="Folder to write the MMRec-layout dataset into."),
    name: str = typer.Option("dataset", "--name", help="Dataset name (the .inter stem)."),
    user_col: str = typer.Option("user", "--user-col", help="Interactions: user id column."),
    item_col: str = typer.Option("item", "--item-col", help="Interactions: item id column."),
    time_col: str = typer.Option(
        "timestamp", "--time-col", help="Interactions: time column (unix seconds or ISO 8601); '' for a log without."),
    rating_col: str | None = typer.Option(
        None, "--rating-col", help="Interactions: rating column (kept in .inter).", show_default="none, all 1.0"),
    min_rating: float | None = typer.Option(
        None, "--min-rating", help="Keep only rows rated at least this.", show_default="keep all"),
    type_col: str | None = typer.Option(
        None, "--type-col", help="Interactions: event type column.", show_default="none"),
    types: list[str] | None = typer.Option(
        None, "--types", help="Keep only these event types (comma-separated or repeated).", show_default="keep all"),
    id_col: str = typer.Option("id", "--id-col", help="Items: id column (the ids --item-col refers to)."),
    text: list[str] | None = typer.Option(
        None, "--text", help="Items: text column(s), joined and embedded with all-MiniLM-L6-v2 (text extra).",
        show_default="none"),
    categorical: list[str] | None = typer.Option(
        None, "--categorical", help="Items: one-hot column(s).", show_default="none"),
    multi: list[str] | None = typer.Option(
        None, "--multi", help="Items: multi-valued column(s), multi-hot.", show_default="none"),
    multi_sep: str = typer.Option("|", "--multi-sep", help="Separator of values in a multi-valued text cell."),
    numeric: list[str] | None = typer.Option(
        None, "--numeric", help="Items: numeric column(s), standardised.", show_default="none"),
    image: str | None = typer.Option(
        None, "--image", help="Items: image path column (needs --image-model).", show_default="none"),
    image_model: Path | None = typer.Option(
        None, "--image-model", help="ONNX image model: input n x 3 x H x W, output n x d (or a feature map).",
        show_default="none"),
    image_root: Path | None = typer.Option(
        None, "--image-root", help="Folder image paths are relative to.", show_default="the items file's folder"),
    image_size: int | None = typer.Option(
        None, "--image-size", help="Input size for a model with a dynamic one.", show_default="the model's, else 224"),
    display: list[str] | None = typer.Option(
        None, "--display", help="Items: columns shown in responses (item_meta.jsonl).",
        show_default="the feature columns but --image"),
    max_categories: int = typer.Option(
        1000, "--max-categories", help="Most columns of a one/multi-hot block; the rarest values share one."),
    drop_unknown_items: bool = typer.Option(
        False, "--drop-unknown-items", help="Drop (and count) log rows whose item --items lacks, instead of failing."),
    strict: bool = typer.Option(
        False, "--strict", help="Fail on empty text or an unreadable image instead of filling it with zeros."),
    seed: int = typer.Option(2024, "--seed", help="Seed of the per-user train/valid/test split."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Build an MMRec dataset from an event log and an item table (features, display fields, split, record)."""
    from pydantic import ValidationError

    from training.data.build import BuildSpec, build_dataset, write_build

    try:
        spec = BuildSpec(
            name=name, user_col=user_col, item_col=item_col, time_col=time_col or None, rating_col=rating_col,
            min_rating=min_rating, type_col=type_col, types=_columns(types) or None, id_col=id_col,
            text=_columns(text), categorical=_columns(categorical), multi=_columns(multi), multi_sep=multi_sep,
            numeric=_columns(numeric), image=image, image_root=str(image_root) if image_root else None,
            display=_columns(display) if display is not None else None, max_categories=max_categories,
            drop_unknown_items=drop_unknown_items, strict=strict, seed=seed,
        )  # fmt: skip
    except ValidationError as e:
        raise _fail(DataError("; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors()))) from None
    hook, bars = _progress_bars(progress)
    try:
        extractor = None
        if image is not None:
            if image_model is None:
                raise DataError("--image needs --image-model FILE.onnx (the model that turns images into features)")
            from training.data.images import OnnxImageExtractor

            extractor = OnnxImageExtractor(image_model, size=image_size)
        with bars:
            result = build_dataset(interactions, items, spec, image_extractor=extractor, progress=hook)
        write_build(result, out)
    except (DataError, OSError) as e:
        raise _fail(e) from None
    _report(out, result)


@app.command("convert-grouplens")
def convert_grouplens(
    src: Path = typer.Argument(..., help="MovieLens-100k folder (u.data, u.item, u.user)."),
    out: Path = typer.Option(..., "--out", help="Folder to write the MMRec layout into."),
    seed: int = typer.Option(2024, "--seed", help="Seed of the per-user split."),
    text: bool = typer.Option(False, "--text", help="Also embed titles (all-MiniLM-L6-v2; needs the text extra)."),
    name: str = typer.Option("ml100k", "--name", help="Dataset name (the .inter stem)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Convert MovieLens-100k to the MMRec layout: `data build` with the MovieLens columns (meta [+ text], titles)."""
    from training.data.build import write_build
    from training.data.grouplens import build_grouplens

    hook, bars = _progress_bars(progress)
    try:
        with bars:
            result = build_grouplens(src, seed=seed, text=text, progress=hook)
        if name != result.dataset.name:
            result = replace(result, dataset=replace(result.dataset, name=name))
        write_build(result, out)
    except (DataError, OSError) as e:
        raise _fail(e) from None
    _report(out, result)
