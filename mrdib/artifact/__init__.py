"""The artifact: the only seam between training (writer) and service (reader).

`schema` holds the manifest model and the file layout; `store` publishes, verifies and
loads artifact directories. Neither imports torch, faiss or onnxruntime.
"""

from mrdib.artifact.schema import SCHEMA_VERSION, ArtifactError, Manifest
from mrdib.artifact.store import (
    LoadedArtifact,
    current_version,
    list_versions,
    load_artifact,
    publish,
    verify_artifact,
)

__all__ = [
    "SCHEMA_VERSION",
    "ArtifactError",
    "LoadedArtifact",
    "Manifest",
    "current_version",
    "list_versions",
    "load_artifact",
    "publish",
    "verify_artifact",
]
