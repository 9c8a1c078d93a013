"""``davit predict --backend``: the model exported to ONNX Runtime or OpenVINO gives PyTorch's top-1,
on the golden inputs and on the demo photos, and impossible runtime options are refused."""
import json

import pytest
import torch

from davit import save_pretrained
from davit.checkpoint.card import ModelCard
from davit.checkpoint.formats import to_davit
from davit.cli.app import run_subcommand
from davit.engine.infer import InferenceOptions, _OnRuntime, infer
from davit.errors import InvalidArgumentError
from davit.model import DaViTClassifier
from tests.paths import REPO

pytestmark = pytest.mark.slow  # exports to each runtime

PHOTOS = [str(path) for path in sorted((REPO / "demo").glob("*.jpg"))]


@pytest.fixture(scope="module")
def golden_model(golden, golden_arch):
    arch, num_classes = golden_arch
    model = DaViTClassifier(arch, num_classes=num_classes).eval()
    model.load_state_dict(to_davit(golden["state_dict_official"]))
    model.card = ModelCard(model.arch, num_classes, tuple(f"c{i}" for i in range(num_classes)))
    model.class_names = list(model.card.class_names)
    return model


# OpenVINO here; ONNX Runtime through the command line on the photos below (the runtimes themselves
# against the golden logits in tests/test_runtime.py).
@pytest.mark.parametrize("backend", ["openvino"])
def test_a_runtime_gives_the_golden_top1(golden, golden_model, backend):
    pytest.importorskip(backend)
    runtime = _OnRuntime(golden_model, InferenceOptions(inputs=(), backend=backend))
    logits = runtime(golden["inputs"]["x224"])
    expected = golden["outputs"]["official_logits_x224"]
    assert logits.argmax(1).tolist() == expected.argmax(1).tolist()
    torch.testing.assert_close(logits, expected, atol=1e-4 * expected.abs().max().item(), rtol=0)


def test_predict_on_onnxruntime_gives_torchs_top1_on_the_photos(golden_model, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    folder = save_pretrained(golden_model, tmp_path / "golden")
    results = {}
    for backend in ("torch", "onnxruntime"):
        assert run_subcommand("predict", [*PHOTOS, "--checkpoint", str(folder), "--json", "--num-workers", "0",
                                          "--device", "cpu", "--backend", backend]) == 0
        results[backend] = json.loads(capsys.readouterr().out)
    for torch_result, runtime_result in zip(results["torch"], results["onnxruntime"]):
        assert torch_result["image"] == runtime_result["image"]
        torch_top, runtime_top = torch_result["topk"], runtime_result["topk"]
        assert [top["label"] for top in runtime_top][:1] == [top["label"] for top in torch_top][:1]
        assert runtime_top[0]["score"] == pytest.approx(torch_top[0]["score"], abs=1e-4)


@pytest.mark.parametrize("options, message", [
    ({"backend": "tensorrt"}, "--backend must be one of"),
    ({"backend": "openvino", "device": "cuda"}, "runs on the CPU"),
    ({"backend": "onnxruntime", "dtype": "bf16"}, "runs --dtype fp32, not bf16"),
    ({"backend": "openvino", "dtype": "fp16"}, "fp32 or bf16, not fp16"),
])
def test_impossible_runtime_options_are_refused(options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        infer(InferenceOptions(inputs=tuple(PHOTOS), **options))
