"""int8 through NNCF/OpenVINO and ONNX Runtime: the model is really int8, agrees with fp32 on
held-out images, and is refused when it does not."""
import numpy as np
import pytest
import torch
from PIL import Image

from davit import quantize
from davit.checkpoint.resolve import resolve_model
from davit.data.calibration import folder_images
from davit.data.transforms import build_test_transform
from davit.dtypes import cpu_has_bf16, cpu_int8_instructions
from davit.errors import DatasetError, ExportError, InvalidArgumentError
from davit.model import build_model
from davit.quantize import QuantizationReport, check_agreement, check_speed, quantize_openvino
from davit.runtime import OpenVinoBackend, convert_to_openvino
from tests.helpers import MINI_ARCH, randomise_, tiny_classifier

pytestmark = pytest.mark.slow  # int8 calibration with NNCF

SIZE = (64, 64)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomise_(build_model(resolve_model(MINI_ARCH).arch, 10)).eval()


@pytest.fixture(scope="module")
def calibration():
    return torch.randn(12, 3, *SIZE, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def holdout():
    return torch.randn(20, 3, *SIZE, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def ov_model(model):
    pytest.importorskip("nncf")
    return convert_to_openvino(model, SIZE)


@pytest.fixture(scope="module")
def quantized(model, ov_model, calibration, holdout):
    return quantize_openvino(model, [calibration[:6], calibration[6:]], holdout, min_agreement=0.8,
                             timing_repeats=2, converted=ov_model)


def int8_ops(ov_model) -> int:
    """Operations on int8/uint8 tensors in an ``openvino.Model``."""
    return sum(any(out.get_element_type().get_type_name() in ("i8", "u8") for out in op.outputs())
               for op in ov_model.get_ops())


def test_openvino_int8_agrees_with_fp32_on_the_holdout_and_reports_the_speed(quantized, ov_model, model,
                                                                             holdout):
    int8, report = quantized
    assert int8_ops(int8) > 10 and int8_ops(ov_model) == 0  # quantised, and the fp32 model kept
    assert report.runtime == "openvino" and report.calibration_images == 12
    assert report.compared_on == "holdout" and report.compared_images == 20
    backend = OpenVinoBackend(int8, None, threads=1, int8=True)
    with torch.no_grad():
        expected = model(holdout).argmax(1)
    agreement = (backend(holdout).argmax(1) == expected).float().mean().item()
    assert report.agreement == pytest.approx(agreement) and report.agreement >= 0.8
    assert report.float_images_per_second > 0 and report.int8_images_per_second > 0
    assert report.speedup == report.int8_images_per_second / report.float_images_per_second
    assert report.float_precision in ("f32", "bf16")
    assert report.to_dict()["speedup"] == report.speedup
    assert "int8 (openvino, 12 calibration images): top-1 agrees with fp32 on" in report.summary()


def test_int8_that_disagrees_with_fp32_is_refused(model, ov_model, quantized, holdout, monkeypatch):
    # held-out images 20x brighter than the calibration ones: their activations clip at the
    # calibrated ranges and the top-1 classes scatter (the quantisation itself is the fixture's)
    monkeypatch.setattr(quantize, "quantize_openvino_model", lambda fp32, batches: quantized[0])
    with pytest.raises(ExportError, match=r"agrees with fp32 on only .*% of 20 holdout images, under the "
                                          r"minimum 99%; calibrate on more images"):
        quantize_openvino(model, holdout, 20 * holdout, min_agreement=0.99, timing_repeats=0, converted=ov_model)


def test_without_holdout_the_calibration_images_are_compared():
    report = QuantizationReport("openvino", 5, "calibration", 5, 0.8, 0.9, "f32", None, None, 16)
    assert report.speedup is None and "of 5 calibration images" in report.summary()
    with pytest.raises(ExportError, match="80.00% of 5 calibration images, under the minimum 90%"):
        check_agreement(report)


def test_no_calibration_images_is_a_clear_error(model, tmp_path):
    with pytest.raises(DatasetError, match="no calibration images were given"):
        quantize_openvino(model, [])
    with pytest.raises(InvalidArgumentError, match="between 0 and 1"):
        quantize_openvino(model, torch.zeros(1, 3, *SIZE), min_agreement=99)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="holds no readable images"):
        folder_images(tmp_path, build_test_transform(exact_size=SIZE))
    with pytest.raises(DatasetError, match="does not exist"):
        folder_images(tmp_path / "missing", build_test_transform(exact_size=SIZE))


def test_folder_images_preprocess_and_skip_unreadable_files(tmp_path, caplog):
    for index in range(3):
        pixels = np.full((20, 30, 3), 60 * index, dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{index}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    batches = folder_images(tmp_path, build_test_transform(exact_size=SIZE), batch_size=2)
    assert [tuple(b.shape) for b in batches] == [(2, 3, *SIZE), (1, 3, *SIZE)]
    assert "skipped an unreadable calibration image" in caplog.text


def _timed_report(float_speed: float, int8_speed: float) -> QuantizationReport:
    return QuantizationReport("openvino", 12, "holdout", 20, 1.0, 0.99, "bf16", float_speed, int8_speed, 16)


def test_an_int8_model_slower_than_the_float_one_is_refused_or_written_with_a_warning(caplog):
    slower = _timed_report(60.0, 31.2)
    with pytest.raises(ExportError, match=r"0\.52x the float model's speed .*--allow-slower-int8"):
        check_speed(slower)
    with caplog.at_level("WARNING", logger="davit"):
        check_speed(slower, allow_slower=True)
    assert "0.52x" in caplog.text and "used anyway" in caplog.text
    check_speed(_timed_report(60.0, 90.0))  # faster: written
    check_speed(QuantizationReport("openvino", 12, "holdout", 20, 1.0, 0.99, "bf16", None, None, 16))  # untimed


@pytest.mark.slow
def test_pt2e_int8_through_inductor_runs_at_any_batch_and_reports(tmp_path):
    pytest.importorskip("torchao")
    from davit.quantize import quantize_pt2e

    model = tiny_classifier([str(i) for i in range(10)], spread=20.0)
    torch.manual_seed(1)
    calibration = torch.randn(8, 3, 64, 64)
    int8, report = quantize_pt2e(model, calibration, min_agreement=0.5, batch_size=4, timing_repeats=2)
    images = torch.randn(6, 3, 64, 64)  # one batch of 4 and a padded one of 2
    with torch.inference_mode():
        expected = model(images)
    out = int8(images)
    assert out.shape == expected.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out.argmax(1) == expected.argmax(1)).float().mean() >= 0.5
    # the layers left in floating point, and the timing's float path, in this CPU's fastest float
    # precision: bf16 autocast where it is native, else fp32
    assert report.runtime == "torch-inductor" and report.speedup is not None
    assert report.float_precision == int8.float_precision == ("bf16" if cpu_has_bf16() else "fp32")
    assert report.int8_instructions == cpu_int8_instructions()
    assert "int8 (torch-inductor" in report.summary()


@pytest.mark.parametrize(("flags", "expected"), [
    ("fpu avx2 avx512f avx512_vnni amx_bf16 amx_int8 amx_tile", "AMX-INT8"),
    ("fpu avx2 avx512f avx512_vnni avx512_bf16", "AVX512-VNNI"),
    ("fpu avx2 avx_vnni", "AVX-VNNI"),
    ("fpu fma avx avx2", None),
])
def test_int8_dot_product_instructions_are_read_from_the_cpu_flags(flags, expected):
    cpuinfo = f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    assert cpu_int8_instructions(cpuinfo) == expected


def test_a_slower_int8_model_on_a_cpu_without_int8_instructions_says_why():
    without = QuantizationReport("torch-inductor", 8, "holdout", 20, 1.0, 0.99, "fp32", 10.0, 6.0, 16, None)
    assert "not faster on this machine (this CPU has no VNNI or AMX int8 dot-product instructions)" in \
        without.summary()
    with pytest.raises(ExportError, match="no VNNI or AMX int8"):
        check_speed(without)
    with_vnni = QuantizationReport("torch-inductor", 8, "holdout", 20, 1.0, 0.99, "bf16", 10.0, 6.0, 16, "AVX512-VNNI")
    assert "not faster on this machine" in with_vnni.summary() and "VNNI or AMX" not in with_vnni.summary()
    faster = QuantizationReport("torch-inductor", 8, "holdout", 20, 1.0, 0.99, "bf16", 10.0, 13.0, 16, "AMX-INT8")
    assert "1.30x" in faster.summary() and "not faster" not in faster.summary()
