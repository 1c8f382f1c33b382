"""onnxruntime falls back to CPU silently when an accelerator provider cannot be used: the service says so.

A real onnxruntime session is asked for CUDA on this CPU-only build (onnxruntime accepts the request and runs
on CPU): that is exactly the silent fallback of a GPU machine with a broken CUDA install. The log is read
through a recorder put in place of the module's logger, the one stand-in here (structlog writes to the
process's stderr, which the test cannot capture reliably).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from service import towers
from service.towers import CPU, ItemTower, check_providers

CUDA = "CUDAExecutionProvider"


class Recorder:
    """Keeps what is logged: (level, event, fields)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict]] = []

    def warning(self, event: str, **fields: object) -> None:
        self.records.append(("warning", event, fields))


@pytest.fixture()
def logs(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(towers, "log", rec)
    return rec


def _item_tower_file(path: Path) -> Path:
    """A one-modality item tower: text [B, 3] -> item_vector [B, 2]."""
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(3, 2), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["text", "W"], ["item_vector"])], "item_tower",
                              [helper.make_tensor_value_info("text", TensorProto.FLOAT, ["B", 3])],
                              [helper.make_tensor_value_info("item_vector", TensorProto.FLOAT, ["B", 2])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="CUDA really works here: nothing falls back")
@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")  # onnxruntime's own note about the request
def test_cuda_requested_but_cpu_active_is_logged(tmp_path, logs, monkeypatch):
    monkeypatch.setattr(towers, "choose_providers", lambda use_gpu: [CUDA, CPU])
    tower = ItemTower(_item_tower_file(tmp_path / "item.onnx"), {"text": 3}, 2, use_gpu=True)
    assert tower.providers == [CPU]  # onnxruntime accepted the request and silently runs on CPU
    assert np.allclose(tower.embed({"text": np.ones(3, np.float32)}), [6.0, 9.0])
    [(level, event, fields)] = logs.records
    assert (level, event) == ("warning", "onnx_provider_fallback")
    assert fields["requested"] == [CUDA, CPU] and fields["active"] == [CPU] and fields["missing"] == [CUDA]
    assert fields["model"].endswith("item.onnx")


def test_no_warning_when_what_was_asked_is_active(tmp_path, logs, monkeypatch):
    monkeypatch.setattr(towers, "gpu_present", lambda: False)
    ItemTower(_item_tower_file(tmp_path / "item.onnx"), {"text": 3}, 2, use_gpu=True)
    assert logs.records == []


def test_check_providers_cases(logs):
    # An accelerator asked for and active: nothing to say.
    assert check_providers(Path("m.onnx"), [CUDA, CPU], [CUDA, CPU], gpu_expected=True) == []
    # CPU only asked for and no GPU expected (use_gpu off, or no GPU): nothing to say.
    assert check_providers(Path("m.onnx"), [CPU], [CPU], gpu_expected=False) == []
    assert logs.records == []
    # A GPU is present and use_gpu is on, but this onnxruntime build offers no CUDA provider at all.
    assert check_providers(Path("m.onnx"), [CPU], [CPU], gpu_expected=True) == [CUDA]
    # TensorRT and CUDA asked for, only CUDA came up: the missing one is named.
    assert check_providers(Path("m.onnx"), ["TensorrtExecutionProvider", CUDA, CPU], [CUDA, CPU],
                           gpu_expected=True) == ["TensorrtExecutionProvider"]
    assert [(e, f["requested"], f["active"]) for _, e, f in logs.records] == [
        ("onnx_gpu_unused", [CPU], [CPU]),
        ("onnx_provider_fallback", ["TensorrtExecutionProvider", CUDA, CPU], [CUDA, CPU])]


def test_gpu_present_respects_hidden_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert towers.gpu_present() is False
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert towers.gpu_present() is False
