"""Every runtime gives the PyTorch model's outputs for the same weights, at any batch size, and
the golden model's top-1 on the golden input."""
from pathlib import Path

import pytest
import torch

from davit import exported
from davit.checkpoint.formats import to_davit
from davit.data.calibration import calibration_batches
from davit.dtypes import cpu_has_bf16
from davit.errors import InvalidArgumentError, MissingDependencyError
from davit.exported import open_backend
from davit.model import DaViTClassifier
from davit.runtime import BACKENDS, OnnxRuntimeBackend, OpenVinoBackend, convert_to_openvino

pytestmark = pytest.mark.slow  # exports to ONNX Runtime and OpenVINO

SIZE = (224, 224)  # the golden input's


@pytest.fixture(scope="module")
def model(golden, golden_arch):
    """The golden model (tests/fixtures/davit-mini-golden.pt): 16-128 wide, 10 classes."""
    arch, num_classes = golden_arch
    model = DaViTClassifier(arch, num_classes=num_classes).eval()
    model.load_state_dict(to_davit(golden["state_dict_official"]))
    return model


@pytest.fixture(scope="module")
def images(golden):
    """The golden input and two random images."""
    return torch.cat([golden["inputs"]["x224"], torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))])


@pytest.fixture(scope="module")
def golden_top1(golden):
    return golden["outputs"]["official_logits_x224"].argmax(1)


@pytest.fixture(scope="module")
def expected(model, images):
    with torch.no_grad():
        return model(images)


@pytest.fixture(scope="module")
def ov_model(model):
    pytest.importorskip("openvino")
    return convert_to_openvino(model, SIZE)


def assert_matches(got, expected, rtol):
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert (got - expected).abs().max() <= rtol * expected.abs().max()


def test_torch_backend_is_the_model_itself_and_bf16_autocasts(model, images, expected, golden_top1):
    fp32 = open_backend(model, "torch")
    assert fp32.name == "torch"
    torch.testing.assert_close(fp32(images), expected, rtol=0, atol=0)
    bf16 = open_backend(model, dtype="bf16")
    got = bf16(images)
    assert bf16.name == "torch-bf16" and got.dtype == torch.float32
    assert not torch.equal(got, expected)  # computed in bfloat16, not a copy of fp32's
    assert_matches(got, expected, 0.05)
    assert torch.equal(got[:1].argmax(1), golden_top1)


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from davit.export import export_onnx

    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", input_size=SIZE, verify=False)


def test_onnxruntime_backend_matches_pytorch_at_two_batch_sizes(onnx_file, images, expected, golden_top1):
    backend = OnnxRuntimeBackend(onnx_file, threads=1)
    assert backend.name == "onnxruntime"
    assert_matches(backend(images), expected, 1e-4)
    assert torch.equal(backend(images[:1]).argmax(1), golden_top1)
    assert_matches(backend(images[:1]), expected[:1], 1e-4)
    options = backend.session.get_session_options()
    assert options.intra_op_num_threads == 1
    # spinning worker threads would keep cores busy after each call
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_open_backend_exports_for_onnxruntime_and_quantises_for_int8(model, onnx_file, images, expected,
                                                                    monkeypatch):
    import shutil

    sizes = []

    def export(model, path, input_size, verify):  # the module's export, copied instead of redone
        sizes.append(input_size)
        return shutil.copy(onnx_file, path) and path

    monkeypatch.setattr(exported, "export_onnx", export)
    backend = open_backend(model, "onnxruntime", input_size=SIZE)
    assert backend.name == "onnxruntime"
    assert_matches(backend(images), expected, 1e-4)
    calibration = torch.randn(8, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    int8 = open_backend(model, "onnxruntime", input_size=SIZE, int8=True, calibration=calibration)
    assert sizes == [SIZE, SIZE] and int8.name == "onnxruntime-int8"
    got = int8(images)
    assert not torch.equal(got, expected)  # quantised, not the float model
    # near the float model, not garbage: on an AMX Xeon the largest error of these random weights
    # reached 0.22 of the largest logit in two runs of the same test out of four
    assert_matches(got, expected, 0.3)


def test_onnxruntime_static_quantisation_stores_int8_weights(onnx_file, tmp_path):
    import shutil

    import onnx

    from davit.quantize import quantize_onnx_file

    quantized = quantize_onnx_file(Path(shutil.copy(onnx_file, tmp_path)), [torch.randn(4, 3, *SIZE)])
    graph = onnx.load(str(quantized)).graph
    assert sum(node.op_type == "DequantizeLinear" for node in graph.node) > 20
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8_weights) >= 16  # the linear layers' weights (qkv, proj, fc1, fc2 of each block)


def test_openvino_backend_matches_pytorch_in_fp32_and_bf16(ov_model, images, expected, golden_top1):
    fp32 = OpenVinoBackend(ov_model, "fp32", threads=1)
    assert fp32.name == "openvino"
    # OpenVINO would choose bf16 by itself on a CPU that has it: fp32 must be asked for
    assert fp32.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    assert_matches(fp32(images), expected, 1e-4)
    assert_matches(fp32(images[:1]), expected[:1], 1e-4)  # the batch is dynamic
    bf16 = OpenVinoBackend(ov_model, "bf16", threads=1)
    # a CPU without native bfloat16 computes in f32, and the name says so
    assert bf16.name == ("openvino-bf16" if cpu_has_bf16() else "openvino")
    assert_matches(bf16(images), expected, 0.05)
    for backend in (fp32, bf16):
        assert torch.equal(backend(images[:1]).argmax(1), golden_top1)


def test_open_backend_converts_for_openvino(model, ov_model, images, expected, monkeypatch):
    sizes = []
    monkeypatch.setattr(exported, "convert_to_openvino", lambda m, size: sizes.append(size) or ov_model)
    backend = open_backend(model, "openvino", input_size=SIZE)
    assert sizes == [SIZE] and backend.name == "openvino"
    assert_matches(backend(images), expected, 1e-4)


@pytest.mark.parametrize(("backend", "options", "message"), [
    ("tensorrt", {}, "backend must be one of torch, onnxruntime, openvino"),
    ("torch", {"dtype": "fp16"}, "dtype must be one of fp32, bf16"),
    ("torch", {"threads": 0}, "threads must be a positive integer"),
    ("torch", {"int8": True}, "int8 runs on the openvino or onnxruntime backend"),
    ("openvino", {"int8": True}, "int8 needs calibration images"),
    ("onnxruntime", {"dtype": "bf16"}, "no bfloat16 path"),
])
def test_bad_options_are_refused_before_any_work(model, backend, options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        open_backend(model, backend, **options)


def test_a_missing_runtime_names_its_extra(model, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'davit-toolkit\[openvino\]'"):
        open_backend(model, "openvino")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'davit-toolkit\[export\]'"):
        open_backend(model, "onnxruntime")


def test_calibration_batches_take_a_batch_batches_or_single_images():
    batch = torch.zeros(2, 3, 8, 8)
    assert [b.shape for b in calibration_batches(batch)] == [(2, 3, 8, 8)]
    assert [b.shape[0] for b in calibration_batches([batch, batch[0]])] == [2, 1]
    with pytest.raises(InvalidArgumentError, match=r"\(N, 3, H, W\)"):
        calibration_batches([torch.zeros(1, 8, 8)])
    assert BACKENDS == ("torch", "onnxruntime", "openvino")
