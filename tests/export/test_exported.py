"""Exported files opened on their runtime (davit.exported): each format gives the source model's
output within the tolerance it was verified to, reads its card, and refuses what it cannot run."""
import pytest
import torch

from davit.errors import InvalidArgumentError
from davit.exported import ExportedModel, is_exported_file, open_exported

from .conftest import CLASSES

pytestmark = pytest.mark.slow  # exports in three formats

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exports(tiny_classifier, tmp_path_factory):
    """The tiny classifier written once in each format."""
    from davit.export import export_model, plan_export, write_export

    folder = tmp_path_factory.mktemp("exports")
    plan = plan_export(tiny_classifier, input_size=(64, 64))
    written = {"onnx": write_export(plan, folder / "tiny.onnx", "onnx"),
               "exported-program": write_export(plan, folder / "tiny.pt2", "exported-program")}
    try:
        import openvino  # noqa: F401

        written["openvino"] = write_export(plan, folder / "tiny.xml", "openvino")
    except ImportError:
        pass
    written["pixels"] = export_model(tiny_classifier, folder / "pixels.onnx", with_preprocessing=True)
    return written


@pytest.mark.parametrize("fmt", ["onnx", "exported-program", "openvino"])
def test_each_format_gives_the_source_logits_and_card(tiny_classifier, exports, fmt):
    if fmt not in exports:
        pytest.skip("OpenVINO is not installed")
    model = open_exported(exports[fmt])
    assert isinstance(model, ExportedModel) and model.classifies
    assert model.class_names == list(CLASSES) and model.num_classes == len(CLASSES)
    assert model.card.preprocessing == tiny_classifier.card.preprocessing  # exported at its own crop
    assert model.verified_atol == pytest.approx(1e-4)
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = tiny_classifier(images)
    got = model(images)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_onnx_runs_on_openvino_too(tiny_classifier, exports):
    pytest.importorskip("openvino")
    model = open_exported(exports["onnx"], backend="openvino")
    assert model.runtime.startswith("openvino")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = tiny_classifier(images)
    assert (model(images) - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_exported_at_another_size_preprocesses_to_that_size(tiny_classifier, tmp_path):
    from davit.export import export_model

    path = export_model(tiny_classifier, tmp_path / "at96.onnx", input_size=(96, 96))
    card = open_exported(path).card
    assert card.preprocessing.crop_size == 96
    assert card.preprocessing.resize_edge == round(73 * 96 / 64)


def test_refusals_name_the_fix(exports, tmp_path):
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        open_exported(tmp_path / "missing.onnx")
    with pytest.raises(InvalidArgumentError, match="pass --backend openvino for bf16"):
        open_exported(exports["onnx"], dtype="bf16")
    with pytest.raises(InvalidArgumentError, match="runs on torch, not onnxruntime"):
        open_exported(exports["exported-program"], backend="onnxruntime")
    with pytest.raises(InvalidArgumentError, match="raw pixels.*without --with-preprocessing"):
        open_exported(exports["pixels"])


def test_is_exported_file():
    assert is_exported_file("m.onnx") and is_exported_file("dir/M.XML") and is_exported_file("a.pt2")
    assert not is_exported_file("m.pth") and not is_exported_file("hf-hub:org/x.onnx")
    assert not is_exported_file(torch.nn.Linear(1, 1))


def test_inference_model_takes_an_exported_file(tiny_classifier, exports):
    from davit import inference_model
    from tests.paths import REPO

    photo = sorted((REPO / "demo").glob("*.jpg"))[0]
    expected = inference_model(tiny_classifier, str(photo))
    got = inference_model(str(exports["onnx"]), str(photo))
    assert got["pred_label"] == expected["pred_label"] and got["pred_class"] == expected["pred_class"]
    assert abs(got["pred_score"] - expected["pred_score"]) < 1e-4
