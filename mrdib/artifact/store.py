"""Publish, verify and load artifact directories under an artifacts root.

Layout of an artifacts root::

    ROOT/
      current                      text file: the version id being served (flipped atomically)
      20261126T200000Z-1a2b3c4d/   one directory per version (see schema.py for its files)
      .staging-xxxx/               a version being written; never read by anyone

Publishing writes everything into a staging directory on the same filesystem, fsyncs it,
renames it into place and only then flips `current` (write temp file, fsync, rename), so a
reader sees either the old complete version or the new complete version, never a partial one.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from mrdib.artifact import schema as S
from mrdib.artifact.bounds import vector_problem
from mrdib.artifact.schema import ArtifactError, Manifest
from mrdib.item_meta import ItemMetaError, MetaRecord, read_item_meta

CURRENT = "current"
# The default artifacts root of every command that reads or writes one (`mrdib serve`, `mrdib retrain`), relative
# to the working directory: where quickstart.sh publishes when run from the repository root. One constant, so that
# the commands cannot drift apart again (retrain once defaulted to `artifacts` while serve read mrdib-home/).
DEFAULT_ROOT = Path("mrdib-home/artifacts")


def new_version_id(now: datetime | None = None) -> str:
    """`YYYYmmddTHHMMSSZ-` + 5 hex digits of microseconds + 3 random hex digits.

    Ids sort by creation time to the microsecond (several publishes within one second stay in
    order, which `list_versions` and keep-N pruning rely on); the random tail separates writers
    that publish in the same microsecond (and `publish` refuses an existing id anyway).
    """
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{now.microsecond:05x}{secrets.token_hex(2)[:3]}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a new or renamed entry of directory `path` durable (fsync of the file alone does not)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via temp file + fsync + rename (+ fsync of the folder): readers and crashes see old or new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the service may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def staging_dir(root: Path) -> Path:
    """A fresh directory inside `root` (same filesystem, so the final rename is atomic)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=root))


def publish(staging: Path, manifest_fields: dict, root: Path, keep: int = 5) -> Manifest:
    """Seal `staging` (checksums + manifest), move it to ROOT/<version>, flip `current`.

    `manifest_fields` holds every Manifest field except `files` and `schema_version`;
    `model_version` is generated when absent. Keeps the newest `keep` versions (the current
    one is never deleted).
    """
    staging, root = Path(staging), Path(root)
    fields = dict(manifest_fields)
    fields.setdefault("model_version", new_version_id())
    fields["schema_version"] = S.SCHEMA_VERSION
    files: dict[str, dict] = {}
    for p in sorted(staging.iterdir()):
        if p.name == S.MANIFEST or not p.is_file():
            continue
        with open(p, "rb") as f:
            os.fsync(f.fileno())
        files[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    fields["files"] = files
    try:
        manifest = Manifest.model_validate(fields)
    except ValidationError as e:
        raise ArtifactError(f"cannot publish {staging}: invalid manifest: {e}") from e
    atomic_write_text(staging / S.MANIFEST, manifest.model_dump_json(indent=2))
    _check_shapes(staging, manifest)
    final = root / manifest.model_version
    os.chmod(staging, 0o755)  # mkdtemp creates 0700; readers (the service) may run as another user
    if final.exists():
        raise ArtifactError(f"version {manifest.model_version} already exists under {root}")
    os.rename(staging, final)
    fsync_dir(root)
    atomic_write_text(root / CURRENT, manifest.model_version + "\n")
    prune(root, keep)
    return manifest


def list_versions(root: Path) -> list[str]:
    """Published version ids under root, oldest first (ids sort by creation time)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and S.VERSION_RE.match(p.name))


def current_version(root: Path) -> str | None:
    """The version id `current` points to, or None when nothing is published yet."""
    p = Path(root) / CURRENT
    try:
        v = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not S.VERSION_RE.match(v):
        raise ArtifactError(f"{p}: does not name a version id: {v[:80]!r}")
    return v


def prune(root: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` versions, never the current one. Returns the deleted ids."""
    keep = max(1, keep)
    cur = current_version(root)
    versions = list_versions(root)
    doomed = [v for v in versions[:-keep] if v != cur]
    for v in doomed:
        shutil.rmtree(Path(root) / v, ignore_errors=True)
    for p in Path(root).glob(".staging-*"):
        # Staging dirs older than an hour belong to crashed writers.
        if p.is_dir() and datetime.now().timestamp() - p.stat().st_mtime > 3600:
            shutil.rmtree(p, ignore_errors=True)
    return doomed


def read_manifest(path: Path) -> Manifest:
    mpath = Path(path) / S.MANIFEST
    try:
        raw = mpath.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ArtifactError(f"{mpath}: missing manifest") from e
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{mpath}: not UTF-8 text") from e
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{mpath}: not valid JSON (line {e.lineno}: {e.msg})") from e
    if isinstance(data, dict) and data.get("schema_version") not in S.READABLE_SCHEMA_VERSIONS:
        raise ArtifactError(
            f"{mpath}: unknown schema version {data.get('schema_version')!r}; "
            f"this code reads versions {', '.join(map(str, S.READABLE_SCHEMA_VERSIONS))}"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        raise ArtifactError(f"{mpath}: invalid manifest: {e}") from e


def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ArtifactError(f"{path}: unreadable .npy file: {e}") from e
    return tuple(arr.shape), arr.dtype


def _check_shapes(path: Path, m: Manifest) -> None:
    d, n_i, n_u = m.embedding_dim, m.n_items, m.n_users
    expected = {
        S.ITEM_VECTORS: ((n_i, d), np.float32),
        S.USER_VECTORS: ((n_u, d), np.float32),
        S.ITEM_COMPONENTS: ((len(m.components), n_i, d), np.float32),
        S.ITEM_POPULARITY: ((n_i,), np.int64),
    }
    for name, (shape, dtype) in expected.items():
        got_shape, got_dtype = _npy_shape(path / name)
        if got_shape != shape or got_dtype != dtype:
            raise ArtifactError(
                f"{path / name}: shape {got_shape} {got_dtype} disagrees with manifest ({shape} {np.dtype(dtype)})"
            )
    for name, n in ((S.ITEM_IDS, n_i), (S.USER_IDS, n_u)):
        ids = _read_ids(path / name)
        if len(ids) != n:
            raise ArtifactError(f"{path / name}: {len(ids)} ids, manifest says {n}")
    indptr, indices = _read_csr(path / S.TRAIN_CSR)
    if len(indptr) != n_u + 1 or (len(indices) and (indices.min() < 0 or indices.max() >= n_i)):
        raise ArtifactError(f"{path / S.TRAIN_CSR}: CSR shape disagrees with manifest ({n_u} users, {n_i} items)")


def _read_ids(path: Path) -> list[str]:
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: unreadable id list: {e}") from e
    if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
        raise ArtifactError(f"{path}: must be a JSON list of strings")
    if len(set(ids)) != len(ids):
        raise ArtifactError(f"{path}: duplicate ids")
    return ids


def _read_csr(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            indptr, indices = z["indptr"].astype(np.int64), z["indices"].astype(np.int64)
    except (ValueError, OSError, KeyError) as e:
        raise ArtifactError(f"{path}: unreadable CSR (.npz with indptr, indices): {e}") from e
    if len(indptr) == 0 or indptr[0] != 0 or indptr[-1] != len(indices) or np.any(np.diff(indptr) < 0):
        raise ArtifactError(f"{path}: inconsistent CSR indptr")
    return indptr, indices


def read_artifact_meta(path: Path, m: Manifest, item_ids: list[str]) -> list[MetaRecord] | None:
    """The display fields of every item row (None when the version carries none), checked: one valid record
    per item row in row order (mrdib/item_meta.py), and exactly the field names the manifest declares."""
    if m.item_meta_fields is None:
        return None
    f = Path(path) / S.ITEM_META
    try:
        records = read_item_meta(f, item_ids)
    except ItemMetaError as e:
        raise ArtifactError(str(e)) from None
    found = sorted({k for rec in records for k in rec})
    if found != sorted(m.item_meta_fields):
        raise ArtifactError(f"{f}: holds the fields {found}, the manifest declares {m.item_meta_fields}")
    return records


def verify_artifact(path: Path, contents: bool = True) -> Manifest:
    """Check one version directory completely: schema, every file present with its sha256, shapes, and
    (`contents`) finite vectors whose components add up and item metadata that matches the item rows
    (`load_artifact` checks the arrays and records it loads instead).

    Raises ArtifactError naming the first problem found.
    """
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: not a directory")
    m = read_manifest(path)
    if path.name != m.model_version and S.VERSION_RE.match(path.name):
        raise ArtifactError(f"{path}: directory name disagrees with manifest version {m.model_version}")
    for name, entry in m.files.items():
        if "/" in name or name.startswith("."):
            raise ArtifactError(f"{path / S.MANIFEST}: illegal file name {name!r}")
        f = path / name
        if not f.is_file():
            raise ArtifactError(f"{f}: missing (listed in the manifest)")
        if f.stat().st_size != entry.bytes:
            raise ArtifactError(f"{f}: size {f.stat().st_size} bytes, manifest says {entry.bytes}")
        if sha256_file(f) != entry.sha256:
            raise ArtifactError(f"{f}: checksum mismatch (corrupt or modified)")
    _check_shapes(path, m)
    if contents:
        check_contents(path, _mapped(path / S.USER_VECTORS), _mapped(path / S.ITEM_VECTORS),
                       _mapped(path / S.ITEM_COMPONENTS))
        read_artifact_meta(path, m, _read_ids(path / S.ITEM_IDS))
    return m


# Components are summed in float32 by the exporter; the sum may differ from the stored item vector by rounding.
COMPONENT_SUM_ATOL = 1e-4
_CHECK_ROWS = 65_536  # rows per chunk: bounds the memory of the content check on million-item catalogues


def check_contents(path: Path, users: np.ndarray, items: np.ndarray, comps: np.ndarray) -> None:
    """Vectors can be served (finite, norms within `bounds.MAX_VECTOR_NORM`) and the item components add up to
    the item vectors.

    Checksums only prove the files are the ones the exporter wrote; this catches an exporter (or a
    hand-assembled artifact) that wrote NaN, vectors so long that scores overflow, or an explanation that
    does not explain the score -- the service would otherwise rank with garbage, fail every request of
    such users, or report shares that sum to something else.
    Works on loaded or memory-mapped arrays, in chunks (bounded memory on million-item catalogues).
    """
    for start in range(0, max(len(users), 1), _CHECK_ROWS):
        _servable(path / S.USER_VECTORS, np.asarray(users[start : start + _CHECK_ROWS]), start)
    for start in range(0, items.shape[0], _CHECK_ROWS):
        block = np.asarray(items[start : start + _CHECK_ROWS])
        _servable(path / S.ITEM_VECTORS, block, start)
        parts = np.asarray(comps[:, start : start + _CHECK_ROWS])
        for c, part in enumerate(parts):
            _servable(path / S.ITEM_COMPONENTS, part, start, f"component {c}: ")
        total = parts.sum(0, dtype=np.float64)
        err = np.abs(total - block)
        tol = COMPONENT_SUM_ATOL * max(1.0, float(np.abs(block).max(initial=0.0)))
        if not (err <= tol).all():  # also false for NaN components
            row = start + int(np.nanargmax(np.where(np.isnan(err), np.inf, err).max(1)))
            raise ArtifactError(
                f"{path / S.ITEM_COMPONENTS}: components do not sum to the item vector (item row {row}, "
                f"largest difference {np.nanmax(err):.3g}, tolerance {tol:.3g})"
            )


def _servable(file: Path, rows: np.ndarray, start: int, what: str = "") -> None:
    problem = vector_problem(rows, start) if len(rows) else None
    if problem:
        raise ArtifactError(f"{file}: {what}{problem}")


def _mapped(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


@dataclass(frozen=True)
class LoadedArtifact:
    """Arrays of a verified artifact; ONNX and FAISS files are left to the reader's own libraries."""

    path: Path
    manifest: Manifest
    item_vectors: np.ndarray
    user_vectors: np.ndarray
    item_components: np.ndarray
    item_ids: list[str]
    user_ids: list[str]
    item_popularity: np.ndarray
    train_indptr: np.ndarray
    train_indices: np.ndarray
    item_meta: list[MetaRecord] | None = None  # display fields per item row; None: the version has none

    def file(self, name: str) -> Path:
        return self.path / name

    def seen_items(self, user_row: int) -> np.ndarray:
        return self.train_indices[self.train_indptr[user_row] : self.train_indptr[user_row + 1]]


def load_artifact(path: Path, verify: bool = True) -> LoadedArtifact:
    """The arrays of one version; `verify` = everything `verify_artifact` checks, the contents on the loaded arrays."""
    path = Path(path)
    m = verify_artifact(path, contents=False) if verify else read_manifest(path)

    def npy(name: str) -> np.ndarray:
        return np.load(path / name, allow_pickle=False)

    items, users, comps = npy(S.ITEM_VECTORS), npy(S.USER_VECTORS), npy(S.ITEM_COMPONENTS)
    if verify:
        check_contents(path, users, items, comps)
    indptr, indices = _read_csr(path / S.TRAIN_CSR)
    item_ids = _read_ids(path / S.ITEM_IDS)
    return LoadedArtifact(
        path=path,
        manifest=m,
        item_vectors=items,
        user_vectors=users,
        item_components=comps,
        item_ids=item_ids,
        user_ids=_read_ids(path / S.USER_IDS),
        item_popularity=npy(S.ITEM_POPULARITY),
        train_indptr=indptr,
        train_indices=indices,
        item_meta=read_artifact_meta(path, m, item_ids),
    )


def load_current(root: Path, verify: bool = True) -> LoadedArtifact | None:
    v = current_version(root)
    return None if v is None else load_artifact(Path(root) / v, verify=verify)
