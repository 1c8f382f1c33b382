"""MMRec loader: exact counts on the shared data, round trips, and one clear error per kind of bad input."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests._data_helpers import GOOD_ROWS, HEADER, make_mmrec, shared_copy_with_short_text_features, shared_dataset
from training.data.dataset import DataError
from training.data.mmrec import load_mmrec, write_mmrec
from training.data.synth import SynthConfig, generate_synthetic


def test_shared_ml100k_mm_exact_counts() -> None:
    ds = load_mmrec(shared_dataset("ml-100k-mm"))
    assert (ds.n_users, ds.n_items) == (943, 1682)
    assert ds.counts() == {"train": 80024, "valid": 9988, "test": 9988}
    assert ds.feature_dims == {"meta": 29, "text": 384}
    assert ds.user_ids[:2] == ["1", "2"] and ds.item_ids[:2] == ["1", "2"]
    assert ds.warnings == []
    assert all(x.dtype == np.float32 for x in ds.features.values())


def test_tiny_folder_loads_with_defaults(tmp_path: Path) -> None:
    ds = load_mmrec(make_mmrec(tmp_path / "d"))
    assert ds.name == "tiny"
    assert (ds.n_users, ds.n_items) == (2, 4)
    assert ds.counts() == {"train": 4, "valid": 1, "test": 1}
    assert ds.user_ids == ["0", "1"] and ds.item_ids == ["0", "1", "2", "3"]
    assert ds.timestamps.tolist() == [100, 101, 102, 103, 104, 105]
    assert set(ds.modalities) == {"image", "text"}


def test_column_order_from_header_extra_columns_and_modality_map(tmp_path: Path) -> None:
    rows = [f"{s}\t{i}\tfoo\t{u}" for u, i, _, _, s in (r.split("\t") for r in GOOD_ROWS)]
    d = make_mmrec(tmp_path / "d", rows=rows, header="x_label\titemID\tcomment\tuserID")
    (d / "picture.npy").write_bytes((d / "image_feat.npy").read_bytes())
    ds = load_mmrec(d, modality_map={"vision": "picture.npy"})
    assert ds.modalities == ["vision"]
    assert ds.counts() == {"train": 4, "valid": 1, "test": 1}
    assert (ds.timestamps == 0).all()


@pytest.mark.parametrize("n_modalities", [2, 3])
def test_round_trip_generator_output(tmp_path: Path, n_modalities: int) -> None:
    cfg = SynthConfig.preset("small", n_users=80, n_items=60, n_interactions=1200,
                             modalities=["image", "text", "audio"][:n_modalities])  # fmt: skip
    ds = load_mmrec(generate_synthetic(cfg, tmp_path / "s"))
    assert (ds.n_users, ds.n_items, len(ds.users)) == (80, 60, 1200)
    assert sorted(ds.modalities) == sorted(cfg.modalities)
    assert ds.item_ids[0] == "item000000" and ds.warnings == []
    again = load_mmrec(write_mmrec(ds, tmp_path / "copy"))
    assert again.fingerprint() == ds.fingerprint()


def test_duplicates_dropped_keeping_first(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS, "1\t1\t1.0\t200\t2"]  # (1, 1) again, as a test row
    ds = load_mmrec(make_mmrec(tmp_path / "d", rows=rows))
    assert len(ds.users) == 6
    assert ds.counts()["test"] == 1
    assert len(ds.warnings) == 1 and "duplicate" in ds.warnings[0] and "line 8" in ds.warnings[0]


def test_users_without_training_rows_dropped(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS, "2\t0\t1.0\t300\t1", "2\t3\t1.0\t301\t2"]
    ds = load_mmrec(make_mmrec(tmp_path / "d", rows=rows))
    assert ds.n_users == 3  # the row stays so internal ids equal the file's ids
    assert 2 not in set(ds.users.tolist())
    assert ds.counts() == {"train": 4, "valid": 1, "test": 1}
    assert any("1 user(s) without training" in w for w in ds.warnings)


def test_id_mappings_give_external_ids(tmp_path: Path) -> None:
    d = make_mmrec(tmp_path / "d")
    (d / "i_id_mapping.csv").write_text("org_id\tremap_id\nB3\t3\nB0\t0\nB1\t1\nB2\t2\n", encoding="utf-8")
    (d / "u_id_mapping.csv").write_text("org_id\tremap_id\nalice\t0\nbob\t1\ncarol\t2\n", encoding="utf-8")
    ds = load_mmrec(d)
    assert ds.item_ids == ["B0", "B1", "B2", "B3"]
    assert ds.user_ids == ["alice", "bob", "carol"]  # a mapping may know more users than the file has


def test_amazon_release_layout(tmp_path: Path) -> None:
    """The MMRec Amazon releases: <ds>.inter, 4096-d image and 384-d text features, asin/reviewerID mappings."""
    rng = np.random.default_rng(0)
    feats = {"image": rng.random((4, 4096), dtype=np.float32), "text": rng.standard_normal((4, 384))}
    d = make_mmrec(tmp_path / "baby", name="baby", features=feats)
    (d / "i_id_mapping.csv").write_text("asin\titemID\nB00A\t0\nB00B\t1\nB00C\t2\nB00D\t3\n", encoding="utf-8")
    (d / "u_id_mapping.csv").write_text("reviewerID,userID\nAX,0\nAY,1\n", encoding="utf-8")  # comma variant
    ds = load_mmrec(d)
    assert ds.name == "baby" and ds.feature_dims == {"image": 4096, "text": 384}
    assert ds.features["text"].dtype == np.float32  # float64 on disk, converted
    assert ds.item_ids[3] == "B00D" and ds.user_ids == ["AX", "AY"]


def test_large_file_keeps_each_pair_once(tmp_path: Path) -> None:
    """A 100k-line file with many duplicate pairs: each (user, item) survives exactly once, first row kept.

    Loading speed is a benchmark concern (a shared machine's clock is not a test oracle); this checks that
    the vectorised duplicate handling is right at a size where collisions are common.
    """
    rng = np.random.default_rng(0)
    n = 100_000
    u, i = rng.integers(0, 5000, n), rng.integers(0, 2000, n)
    pairs = zip(u.tolist(), i.tolist(), strict=True)
    rows = [f"{a}\t{b}\t1.0\t{1_600_000_000 + k}\t0" for k, (a, b) in enumerate(pairs)]
    d = make_mmrec(tmp_path / "d", rows=rows, features={"text": np.zeros((2000, 8), np.float32)})
    ds = load_mmrec(d)
    key = u * 2000 + i
    _, first = np.unique(key, return_index=True)
    assert ds.n_items == 2000
    assert len(ds.users) == len(first)
    kept = {(int(a), int(b)): int(t) for a, b, t in zip(ds.users, ds.items, ds.timestamps, strict=True)}
    expected = {(int(u[k]), int(i[k])): 1_600_000_000 + int(k) for k in first}
    user_ids = [int(x) for x in ds.user_ids]
    assert {(user_ids[a], b): t for (a, b), t in kept.items()} == expected
    assert any(f"dropped {n - len(first)} duplicate" in w for w in ds.warnings)


# ---- invalid input: every case names the file (and line where one exists) and the problem ----


def _rows_with(line: str) -> list[str]:
    return [*GOOD_ROWS[:3], line, *GOOD_ROWS[3:]]  # the bad row is on file line 5


def _write_inter(text: bytes) -> Callable[[Path], None]:
    return lambda d: (d / "tiny.inter").write_bytes(text)


def _save(name: str, x: np.ndarray, allow_pickle: bool = False) -> Callable[[Path], None]:
    return lambda d: np.save(d / name, x, allow_pickle=allow_pickle)


CASES: dict[str, tuple[Callable[[Path], None], str, tuple[str, ...]]] = {
    "no_inter": (lambda d: (d / "tiny.inter").unlink(), "d", ("no *.inter",)),
    "two_inter": (lambda d: shutil.copy(d / "tiny.inter", d / "other.inter"), "d", ("ambiguous", "other.inter")),
    "empty": (_write_inter(b""), "tiny.inter", ("empty",)),
    "header_only": (_write_inter(HEADER.encode() + b"\n"), "tiny.inter", ("no interaction rows",)),
    "missing_column": (_write_inter(b"userID\titemID\trating\n0\t0\t1\n"), "tiny.inter", ("x_label",)),
    "non_numeric": (_write_inter("\n".join([HEADER, *_rows_with("0\tabc\t1\t1\t0")]).encode()),
                    "tiny.inter", ("line 5", "itemID", "abc")),
    "fractional_id": (_write_inter("\n".join([HEADER, *_rows_with("0.5\t0\t1\t1\t0")]).encode()),
                      "tiny.inter", ("line 5", "integer")),
    "field_count": (_write_inter("\n".join([HEADER, *_rows_with("0\t0\t1")]).encode()),
                    "tiny.inter", ("line 5", "expected 5 fields")),
    "latin1": (_write_inter("\n".join([HEADER, *_rows_with("0\t0\t1\t1\t0\tcaf\u00e9")]).encode("latin-1")),
               "tiny.inter", ("line 5", "UTF-8")),
    "negative_user": (_write_inter("\n".join([HEADER, *_rows_with("-1\t0\t1\t1\t0")]).encode()),
                      "tiny.inter", ("line 5", "negative userID")),
    "item_out_of_range": (_write_inter("\n".join([HEADER, *_rows_with("0\t4\t1\t1\t0")]).encode()),
                          "tiny.inter", ("line 5", "itemID 4", "0..3")),
    "unknown_x_label": (_write_inter("\n".join([HEADER, *_rows_with("1\t3\t1\t1\t3")]).encode()),
                        "tiny.inter", ("line 5", "x_label 3")),
    "row_mismatch": (_save("text_feat.npy", np.zeros((3, 3), np.float32)), "d", ("text_feat.npy: 3 rows",)),
    "nan": (_save("text_feat.npy", np.array([[0, 0, 0], [0, np.nan, 0], [0, 0, 0], [0, 0, 0]], np.float32)),
            "text_feat.npy", ("row 1", "NaN")),
    "inf": (_save("image_feat.npy", np.full((4, 6), np.inf)), "image_feat.npy", ("row 0", "inf")),
    "object_array": (_save("text_feat.npy", np.array([[1, "a", None]] * 4, dtype=object), allow_pickle=True),
                     "text_feat.npy", ("object", "unpickl")),
    "string_array": (_save("text_feat.npy", np.array([["a", "b"]] * 4)), "text_feat.npy", ("numeric",)),
    "ndim_1": (_save("text_feat.npy", np.zeros(4, np.float32)), "text_feat.npy", ("2-D",)),
    "ndim_3": (_save("text_feat.npy", np.zeros((4, 2, 2), np.float32)), "text_feat.npy", ("2-D",)),
    "not_npy": (lambda d: (d / "text_feat.npy").write_bytes(b"garbage"), "text_feat.npy", ("not a .npy file",)),
    "npz": (lambda d: np.savez(d / "t.npz", x=np.zeros((4, 3))) or (d / "t.npz").rename(d / "text_feat.npy"),
            "text_feat.npy", (".npz archive",)),
    "no_features": (lambda d: [p.unlink() for p in d.glob("*_feat.npy")], "d", ("no *_feat.npy",)),
    "item_mapping_size": (lambda d: (d / "i_id_mapping.csv").write_text("org_id\tremap_id\na\t0\nb\t1\n"),
                          "i_id_mapping.csv", ("maps 2 items", "exactly 4")),
    "user_mapping_dup": (lambda d: (d / "u_id_mapping.csv").write_text("org_id\tremap_id\na\t0\nb\t0\n"),
                         "u_id_mapping.csv", ("user id 0 is mapped more than once",)),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_input_names_file_and_problem(tmp_path: Path, case: str) -> None:
    corrupt, file_name, phrases = CASES[case]
    d = make_mmrec(tmp_path / "d")
    corrupt(d)
    with pytest.raises(DataError) as info:
        load_mmrec(d)
    msg = str(info.value)
    assert file_name in msg, msg
    for p in phrases:
        assert p in msg, msg


def test_missing_folder_and_missing_named_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_mmrec(tmp_path / "nowhere")
    d = make_mmrec(tmp_path / "d")
    with pytest.raises(DataError, match=r"other\.inter.*does not exist"):
        load_mmrec(d, inter_file="other.inter")
    with pytest.raises(DataError, match=r"audio_feat\.npy.*'audio' does not exist"):
        load_mmrec(d, modality_map={"audio": "audio_feat.npy"})
    shutil.copy(d / "tiny.inter", d / "b.inter")
    assert load_mmrec(d, inter_file="b.inter").name == "b"


def test_shared_copy_with_short_feature_file_names_it(tmp_path: Path) -> None:
    d = shared_copy_with_short_text_features(tmp_path)
    with pytest.raises(DataError, match=r"text_feat\.npy: 1681 rows"):
        load_mmrec(d)



def test_crlf_bom_blank_lines_and_line_numbers(tmp_path: Path) -> None:
    """Windows line ends, a BOM and blank lines load; errors still name the file's own line number."""
    d = make_mmrec(tmp_path / "d")
    lines = ["\ufeff" + HEADER, "", *GOOD_ROWS[:3], "  ", *GOOD_ROWS[3:]]
    text = "\r\n".join(lines) + "\r\n"
    (d / "tiny.inter").write_bytes(text.encode("utf-8"))
    assert load_mmrec(d).counts() == {"train": 4, "valid": 1, "test": 1}
    bad = text.replace(GOOD_ROWS[4], "1\t1\t2.0\t104\t7")  # GOOD_ROWS[4] sits on file line 8
    (d / "tiny.inter").write_bytes(bad.encode("utf-8"))
    with pytest.raises(DataError, match="line 8: x_label 7"):
        load_mmrec(d)
