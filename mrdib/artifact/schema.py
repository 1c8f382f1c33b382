"""Manifest schema of a model artifact: one pydantic model, used by the writer and the reader.

Bump SCHEMA_VERSION whenever a field or file changes meaning; readers refuse any version not in
READABLE_SCHEMA_VERSIONS rather than guess. History: 1 = first release; 2 adds the optional
``side_items_merged`` (version 1 manifests, which lack it, stay readable and mean "unknown"); 3 adds the
optional item display metadata (``item_meta.jsonl`` and ``item_meta_fields``; versions 1 and 2, which
lack both, stay readable and mean "no metadata").

Layout of one artifact directory (file names are fixed here, nowhere else)::

    manifest.json          this model, serialised
    item_vectors.npy       float32 [n_items, d]   score(u, i) = <user_vector, item_vector>
    user_vectors.npy       float32 [n_users, d]
    item_components.npy    float32 [n_components, n_items, d], summing to item_vectors
    item_ids.json          list[str], external item id of each row
    user_ids.json          list[str], external user id of each row
    item_popularity.npy    int64 [n_items] training interaction counts
    train_csr.npz          indptr/indices of each user's training items, most recent first (no pickle)
    user_tower.onnx        history (item rows, padded) -> user vector
    item_tower.onnx        modality features -> item vector (cold-start items)
    index_ip.faiss         inner-product index over item_vectors (recommendations)
    index_cos.faiss        cosine index over normalised item_vectors (similar items)
    item_meta.jsonl        optional: display fields per item row (title, genres, url, ...), the format of
                           mrdib/item_meta.py; present exactly when the manifest's item_meta_fields is set
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mrdib.item_meta import ITEM_META_FILE

SCHEMA_VERSION = 3
READABLE_SCHEMA_VERSIONS = (1, 2, 3)
MANIFEST = "manifest.json"

ITEM_VECTORS = "item_vectors.npy"
USER_VECTORS = "user_vectors.npy"
ITEM_COMPONENTS = "item_components.npy"
ITEM_IDS = "item_ids.json"
USER_IDS = "user_ids.json"
ITEM_POPULARITY = "item_popularity.npy"
TRAIN_CSR = "train_csr.npz"
USER_TOWER = "user_tower.onnx"
ITEM_TOWER = "item_tower.onnx"
INDEX_IP = "index_ip.faiss"
INDEX_COS = "index_cos.faiss"
ITEM_META = ITEM_META_FILE  # optional (see item_meta_fields); the name is the dataset's own, mrdib/item_meta.py

REQUIRED_FILES = (
    ITEM_VECTORS,
    USER_VECTORS,
    ITEM_COMPONENTS,
    ITEM_IDS,
    USER_IDS,
    ITEM_POPULARITY,
    TRAIN_CSR,
    USER_TOWER,
    ITEM_TOWER,
    INDEX_IP,
    INDEX_COS,
)

# Name pattern of a model version id (also the directory name under the artifacts root).
VERSION_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")


class ArtifactError(Exception):
    """An artifact is missing, corrupt, partial or of an unknown schema. The message says which file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class ModalitySpec(_Strict):
    name: str = Field(min_length=1, max_length=64)
    dim: int = Field(ge=1)


class IndexSpec(_Strict):
    """How a FAISS index was built and how good it is against exact search."""

    file: str
    factory: str
    metric: Literal["ip", "cosine"]
    recall_at_k: float | None = Field(default=None, ge=0.0, le=1.0)
    recall_k: int = Field(default=20, ge=1)
    search_params: dict[str, int | float] = Field(default_factory=dict)


class Manifest(_Strict):
    schema_version: int
    model_version: str
    created_at: datetime
    backbone: str
    mrdib: dict | None = Field(default=None, description="MRdIB plug-in config; None when trained without it")
    training_config: dict = Field(default_factory=dict)
    modalities: list[ModalitySpec]
    embedding_dim: int = Field(ge=1)
    n_users: int = Field(ge=0)
    n_items: int = Field(ge=1)
    n_train_interactions: int = Field(ge=0)
    max_history: int = Field(ge=1, description="user tower history length cap (most recent first)")
    components: list[str] = Field(
        min_length=1,
        description="names of the rows of item_components.npy, e.g. collaborative, shared, unique:text, synergy",
    )
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict, description="split -> metric -> value")
    tower_metrics: dict[str, float] = Field(default_factory=dict)
    data_fingerprint: str
    indexes: dict[Literal["ip", "cosine"], IndexSpec]
    quality_gate: dict | None = None
    side_items_merged: dict[str, datetime] | None = Field(
        default=None,
        description="item id -> put time of each admin side-index record (PUT /items) this version was trained "
        "on, written by `mrdib retrain`; None when unknown (a plain `mrdib export`). The service serves a side "
        "record of an item the version contains only if the record is newer than what the version merged.",
    )
    item_meta_fields: list[str] | None = Field(
        default=None,
        description="names of the display fields that item_meta.jsonl holds (in at least one item), sorted; "
        "None when the artifact carries no item metadata (no item_meta.jsonl)",
    )
    files: dict[str, FileEntry]

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v not in READABLE_SCHEMA_VERSIONS:
            readable = ", ".join(map(str, READABLE_SCHEMA_VERSIONS))
            raise ValueError(f"unknown artifact schema version {v}; this code reads versions {readable}")
        return v

    @field_validator("model_version")
    @classmethod
    def _version_format(cls, v: str) -> str:
        if not VERSION_RE.match(v):
            raise ValueError(f"model_version {v!r} does not match {VERSION_RE.pattern}")
        return v

    @field_validator("files")
    @classmethod
    def _all_files_listed(cls, v: dict[str, FileEntry]) -> dict[str, FileEntry]:
        missing = [f for f in REQUIRED_FILES if f not in v]
        if missing:
            raise ValueError(f"manifest lists no checksum for {missing}")
        return v

    @model_validator(mode="after")
    def _item_meta_declared(self) -> Manifest:
        """item_meta.jsonl is checksummed like every file: a manifest naming fields must list the file, and a
        listed file must be described (a stray metadata file no reader would check is refused)."""
        listed = ITEM_META in self.files
        if self.item_meta_fields is not None and not listed:
            raise ValueError(f"item_meta_fields is set but the manifest lists no checksum for {ITEM_META}")
        if listed and self.item_meta_fields is None:
            raise ValueError(f"{ITEM_META} is listed but item_meta_fields is not set")
        return self
