"""Which side-index records (PUT /items) a model version already holds, so the catalogue row serves them.

A retrained version lists the records it merged; a re-PUT of the same item while that run trained is newer
than what was merged and must keep being served from the side index after the swap (else the acknowledged
change would vanish until the next night's run).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mrdib.artifact import schema as S
from mrdib.artifact.schema import Manifest
from service.model_store import version_holds

CREATED = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def _manifest(side_items_merged: dict[str, datetime] | None, schema_version: int = S.SCHEMA_VERSION) -> Manifest:
    entry = {"sha256": "0" * 64, "bytes": 0}
    return Manifest.model_validate({
        "schema_version": schema_version, "model_version": "20261127T020000Z-0000abcd", "created_at": CREATED,
        "backbone": "freedom", "modalities": [{"name": "text", "dim": 4}], "embedding_dim": 8, "n_users": 1,
        "n_items": 3, "n_train_interactions": 1, "max_history": 5, "components": ["collaborative"],
        "data_fingerprint": "f", "indexes": {}, "side_items_merged": side_items_merged,
        "files": {f: entry for f in S.REQUIRED_FILES},
    })  # fmt: skip


def test_retrained_version_holds_exactly_the_records_it_merged() -> None:
    read_at = CREATED - timedelta(hours=1)  # the run read the side index, then trained for an hour
    m = _manifest({"item7": read_at - timedelta(minutes=5)})
    assert version_holds(m, "item7", read_at - timedelta(minutes=5))  # the merged record itself
    assert version_holds(m, "item7", read_at - timedelta(days=1))  # an older record of the same item
    # re-PUT while the run trained: before the version was created, but not in it
    assert not version_holds(m, "item7", read_at + timedelta(minutes=10))
    assert not version_holds(m, "item8", read_at - timedelta(days=1))  # never merged (rejected, or not read)


def test_version_that_merged_nothing_holds_no_side_record() -> None:
    assert not version_holds(_manifest({}), "item7", CREATED - timedelta(days=3))


@pytest.mark.parametrize("schema_version", [1, S.SCHEMA_VERSION])
def test_without_the_list_the_creation_time_decides(schema_version: int) -> None:
    m = _manifest(None, schema_version=schema_version)  # a plain `mrdib export`, or a version-1 artifact
    assert version_holds(m, "item7", CREATED - timedelta(seconds=1))
    assert not version_holds(m, "item7", CREATED + timedelta(seconds=1))
