"""ONNX export (export_onnx), checked against the golden official logits through onnxruntime; Florence-2 towers
and encode_image with dynamic batch and image size."""
import dataclasses
import itertools
import sys

import numpy as np
import pytest
import torch

onnxruntime = pytest.importorskip("onnxruntime")

from davit.checkpoint.formats import to_davit  # noqa: E402
from davit.cli.app import run_subcommand  # noqa: E402
from davit.errors import InvalidArgumentError, MissingDependencyError  # noqa: E402
from davit.export import export_onnx, read_onnx_card  # noqa: E402
from davit.model import ARCHS, DaViTClassifier, Florence2Encoder  # noqa: E402

pytestmark = pytest.mark.slow  # each export traces the model with torch.export (about 10 s)


def test_onnx_reproduces_golden_logits_with_dynamic_batch(golden, golden_arch, tmp_path):
    arch, num_classes = golden_arch
    model = DaViTClassifier(arch, num_classes=num_classes).eval()
    model.load_state_dict(to_davit(golden["state_dict_official"]))
    path = export_onnx(model, tmp_path / "mini.onnx", input_size=(224, 224))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = golden["inputs"]["x224"]
    (logits,) = session.run(None, {"images": x.numpy()})
    np.testing.assert_allclose(logits, golden["outputs"]["official_logits_x224"].numpy(), atol=1e-4)
    (batch,) = session.run(None, {"images": np.concatenate([x.numpy()] * 3)})
    assert batch.shape == (3, num_classes)


def test_export_cli_and_bad_output_name(tmp_path, capsys):
    with pytest.raises(ValueError, match=".onnx"):
        export_onnx(DaViTClassifier("tiny", num_classes=2), tmp_path / "model.bin")
    assert run_subcommand("export", ["tiny", str(tmp_path / "tiny.onnx"), "--random-weights", "--num-classes", "3",
                 "--input-size", "64", "96"]) == 0
    assert (tmp_path / "tiny.onnx").is_file() and not list(tmp_path.glob(".*.part"))
    session = onnxruntime.InferenceSession(str(tmp_path / "tiny.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": torch.randn(1, 3, 64, 96).numpy()})
    assert logits.shape == (1, 3)


def test_missing_exporter_names_the_extra_and_writes_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'davit-toolkit\[export\]'"):
        export_onnx(DaViTClassifier("tiny", num_classes=2), tmp_path / "model.onnx")
    assert run_subcommand("export", ["tiny", str(tmp_path / "tiny.onnx"), "--random-weights"]) == 1
    assert capsys.readouterr().err.startswith("davit export: error: ONNX export needs the 'onnxscript'")
    assert not list(tmp_path.iterdir())


def test_bad_output_name_is_an_invalid_argument(tmp_path, capsys):
    with pytest.raises(InvalidArgumentError, match=".onnx"):
        export_onnx(DaViTClassifier("tiny", num_classes=2), tmp_path / "model.bin")
    assert run_subcommand("export", ["tiny", str(tmp_path / "tiny.bin"), "--random-weights"]) == 1
    assert "must end in .onnx" in capsys.readouterr().err


def test_the_card_travels_in_the_onnx_file_and_the_cli_is_quiet(tmp_path, capsys):
    from davit import get_model, save_pretrained
    from davit.checkpoint.card import ModelCard, Preprocessing
    from davit.export import read_onnx_card

    model = get_model("tiny", num_classes=2)
    model.card = ModelCard("tiny", 2, ("no", "yes"), Preprocessing(72, 64, "bilinear"))
    model.class_names = ["no", "yes"]
    folder = save_pretrained(model, tmp_path / "ft")
    out = tmp_path / "ft.onnx"
    assert run_subcommand("export", [str(folder), str(out), "--input-size", "64", "64"]) == 0
    assert read_onnx_card(out) == model.card
    captured = capsys.readouterr()
    assert captured.out == f"wrote {out}\n"
    assert "onnxscript" not in captured.err and len(captured.err.splitlines()) <= 3, captured.err


SMALL_FLORENCE = dataclasses.replace(ARCHS["florence2-base"], embed_dims=(32, 64, 128, 256),
                                     depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))


# The dynamic-size export (slow: symbolic shapes) once, with the projector; the tower's own
# output at a fixed size.
@pytest.mark.parametrize(("encode_image", "dynamic_size"), [(False, False), (True, True)])
def test_florence2_tower_and_encode_image_with_dynamic_batch_and_size(tmp_path, encode_image, dynamic_size):
    torch.manual_seed(0)
    model = Florence2Encoder(SMALL_FLORENCE, projection_dim=48).eval()
    path = export_onnx(model, tmp_path / "fl.onnx", input_size=(96, 96), dynamic_size=dynamic_size,
                       encode_image=encode_image)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].name == ("image_tokens" if encode_image else "features")
    sizes = [(96, 96), (128, 160)] if dynamic_size else [(96, 96)]
    for batch, (height, width) in itertools.product((1, 3), sizes):
        x = torch.randn(batch, 3, height, width)
        (got,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            expected = model.encode_image(x) if encode_image else model(x)
        assert got.shape == tuple(expected.shape)
        assert np.abs(got - expected.numpy()).max() <= 1e-4 * expected.abs().max().item()
    assert read_onnx_card(path).arch == SMALL_FLORENCE


def test_encode_image_needs_a_projector(tmp_path):
    with pytest.raises(InvalidArgumentError, match="projector"):
        export_onnx(Florence2Encoder(SMALL_FLORENCE, projection_dim=0), tmp_path / "t.onnx",
                    encode_image=True)
    with pytest.raises(InvalidArgumentError, match="projector"):
        export_onnx(DaViTClassifier("tiny", num_classes=2), tmp_path / "t.onnx", encode_image=True)


def test_cli_exports_a_classifier_with_dynamic_size(tmp_path):
    # window 2: a dynamic export is traced where every stage pads and has two windows (side > 64)
    arch = ('{"embed_dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8], '
            '"window_size": 2}')
    out = tmp_path / "cls.onnx"
    assert run_subcommand("export", [arch, str(out), "--random-weights", "--num-classes", "3",
                                     "--input-size", "64", "80", "--dynamic-size"]) == 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 64, 80), (2, 3, 100, 45)]:
        (logits,) = session.run(None, {"images": torch.randn(*shape).numpy()})
        assert logits.shape == (shape[0], 3)
