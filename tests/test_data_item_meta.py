"""Item display metadata: the one format shared by datasets, artifacts and PUT /items (mrdib/item_meta.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mrdib.item_meta import ITEM_META_FILE, ItemMetaError, read_item_meta, select_fields, validate_fields
from training.data.dataset import DataError, InteractionDataset
from training.data.mmrec import load_mmrec, write_mmrec


def _dataset(meta: list[dict] | None) -> InteractionDataset:
    feats = {"text": np.eye(3, dtype=np.float32)}
    ds = InteractionDataset.from_pairs([0, 0, 1, 1], [0, 1, 1, 2], [0, 1, 0, 2], feats, n_users=2)
    return InteractionDataset(**{**ds.__dict__, "item_meta": meta})


def test_metadata_round_trips_through_the_mmrec_layout(tmp_path: Path) -> None:
    meta = [{"title": "Star Wars (1977)", "genres": ["Action", "Sci-Fi"], "year": 1977}, {}, {"price": 9.5}]
    write_mmrec(_dataset(meta), tmp_path)
    lines = (tmp_path / ITEM_META_FILE).read_text(encoding="utf-8").splitlines()
    first = {"id": "i0", "title": "Star Wars (1977)", "genres": ["Action", "Sci-Fi"], "year": 1977}
    assert json.loads(lines[0]) == first
    assert load_mmrec(tmp_path).item_meta == meta


def test_a_dataset_without_metadata_has_none(tmp_path: Path) -> None:
    write_mmrec(_dataset(None), tmp_path)
    assert not (tmp_path / ITEM_META_FILE).exists()
    assert load_mmrec(tmp_path).item_meta is None


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"id": "i0"}', '{"id": "i2"}', '{"id": "i1"}'], "line 2: id 'i2' but item row 1 is 'i1'"),
        (['{"id": "i0"}', '{"id": "i1"}'], "2 lines for 3 items"),
        (['{"id": "i0"}', "not json", '{"id": "i2"}'], "line 2: not valid JSON"),
        (['{"id": "i0", "title": {"x": 1}}', '{"id": "i1"}', '{"id": "i2"}'], "line 1.title: unsupported value type"),
        (['{"title": "x"}', '{"id": "i1"}', '{"id": "i2"}'], 'line 1: expected an object with a string "id"'),
    ],
)
def test_a_bad_metadata_file_is_refused_with_its_line(tmp_path: Path, lines: list[str], message: str) -> None:
    write_mmrec(_dataset(None), tmp_path)
    (tmp_path / ITEM_META_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_mmrec(tmp_path)


def test_field_bounds() -> None:
    assert validate_fields({"title": "x", "tags": ["a"], "price": 1.5, "new": True, "gone": None}) == {
        "title": "x", "tags": ["a"], "price": 1.5, "new": True, "gone": None}  # fmt: skip
    for bad in ({"t": "x" * 5000}, {"t": ["a"] * 100}, {f"f{k}": 1 for k in range(40)}, {"bad key": 1},
                {"id": "x"}, {"t": float("nan")}, {"t": [1]}):  # fmt: skip
        with pytest.raises(ItemMetaError):
            validate_fields(bad)
    assert select_fields({"title": "x", "year": 1}, ["year", "missing"]) == {"year": 1}


def test_reading_checks_every_item_has_a_line(tmp_path: Path) -> None:
    f = tmp_path / ITEM_META_FILE
    f.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c"}\n', encoding="utf-8")
    with pytest.raises(ItemMetaError, match="more lines than the 2 items"):
        read_item_meta(f, ["a", "b"])
