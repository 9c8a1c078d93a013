"""``davit predict --int8`` and ``davit serve --int8``: the int8 model is used only where its top-1
agrees with fp32's and it is faster than the float model on the machine at hand; elsewhere the
command refuses, saying so (or, with --allow-slower-int8, warns and uses it)."""
import json

import pytest
import torch
from PIL import Image

from davit import quantize, save_pretrained
from davit.checkpoint.card import Preprocessing
from davit.cli.app import run_subcommand
from davit.engine.infer import InferenceOptions, infer
from davit.errors import InvalidArgumentError
from davit.serve.model import Int8Serving, load_served_model
from tests.helpers import tiny_classifier

SMALL = Preprocessing(resize_edge=64, crop_size=64)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Twelve 80 x 72 photos of smooth random colour fields, in a folder."""
    folder = tmp_path_factory.mktemp("photos")
    generator = torch.Generator().manual_seed(3)
    for index in range(12):
        coarse = torch.rand(3, 5, 5, generator=generator)
        field = torch.nn.functional.interpolate(coarse[None], size=(72, 80), mode="bilinear")[0]
        Image.fromarray((field.permute(1, 2, 0) * 255).byte().numpy()).save(folder / f"{index:02d}.png")
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = tiny_classifier([f"c{i}" for i in range(10)], preprocessing=SMALL, spread=20.0)
    return save_pretrained(model, tmp_path_factory.mktemp("model") / "tiny")


def _timed_as(monkeypatch, int8_over_float: float) -> None:
    """Make the int8-against-float timing report ``int8_over_float`` (the speed itself depends on
    the CPU; the decision taken on it is what is tested)."""
    def fixed(steps, *args, **kwargs):
        for step in steps.values():
            step()
        return {"float": [1.0], "int8": [1.0 / int8_over_float]}

    monkeypatch.setattr(quantize, "time_in_blocks", fixed)


@pytest.mark.parametrize("options, message", [
    ({"calibration": "photos"}, "go with --int8"),
    ({"int8": True}, "--int8 needs --calibration FOLDER"),
    ({"int8": True, "calibration": "photos", "backend": "onnxruntime"}, "--backend torch .* or openvino"),
    ({"int8": True, "calibration": "photos", "device": "cuda"}, "--int8 runs on the CPU"),
    ({"int8": True, "calibration": "photos", "min_agreement": 1.5}, "share between 0 and 1"),
])
def test_impossible_int8_options_are_refused_before_any_work(checkpoint, options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        infer(InferenceOptions(inputs=("x.jpg",), checkpoint=str(checkpoint), **options))


def test_int8_is_refused_on_the_ray_engine_and_for_serve_without_calibration(checkpoint, capsys):
    assert run_subcommand("predict", ["x.jpg", "--checkpoint", str(checkpoint), "--int8", "--calibration", "p",
                                      "--engine", "ray"]) == 1
    assert "--int8 runs with --engine local" in capsys.readouterr().err
    assert run_subcommand("serve", [str(checkpoint), "--int8"]) == 1
    assert "--int8 needs --calibration FOLDER" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_int8_classifies_like_fp32_where_it_is_faster_and_refuses_where_it_is_not(
        checkpoint, photos, monkeypatch, capsys, caplog):
    pytest.importorskip("torchao")
    images = [str(path) for path in sorted(photos.glob("*.png"))]
    int8_options = ["--int8", "--calibration", str(photos), "--min-agreement", "0.8"]
    common = [*images, "--checkpoint", str(checkpoint), "--json", "--num-workers", "0", "--device", "cpu",
              "--batch-size", "4"]
    assert run_subcommand("predict", common) == 0
    fp32 = json.loads(capsys.readouterr().out)

    _timed_as(monkeypatch, 0.8)
    assert run_subcommand("predict", [*common, *int8_options]) == 1
    error = capsys.readouterr().err
    assert "0.80x the float model's speed" in error and "int8 does not pay here" in error
    assert "leave out --int8" in error and "--allow-slower-int8" in error

    _timed_as(monkeypatch, 1.4)
    with caplog.at_level("INFO", logger="davit"):
        assert run_subcommand("predict", [*common, *int8_options]) == 0
    int8 = json.loads(capsys.readouterr().out)
    assert "1.40x" in caplog.text and "top-1 agrees with fp32 on" in caplog.text
    assert [record["image"] for record in int8] == [record["image"] for record in fp32]
    same = sum(a["pred_label"] == b["pred_label"] for a, b in zip(int8, fp32))
    assert same >= 10  # the same images passed the agreement check at 80%: at least 10 of 12


@pytest.mark.slow
def test_serve_int8_classifier_runs_one_image_and_full_batches(checkpoint, photos, monkeypatch):
    """(Its refusal where int8 is slower is predict's, above: the same open_checked_int8.)"""
    pytest.importorskip("torchao")
    _timed_as(monkeypatch, 1.2)
    served = load_served_model(str(checkpoint), max_batch_size=4, int8=Int8Serving(str(photos), min_agreement=0.8))
    assert served.backend == "torch-int8" and served.describe()["backend"] == "torch-int8"
    int8_model = served.classifier.model
    assert int8_model.batch_sizes == (1, 4)  # a request of one image does not run as a padded batch of four
    float_model = load_served_model(str(checkpoint))
    batch = torch.stack([served.transform(path) for path in sorted(photos.glob("*.png"))[:5]])
    for images in (batch[:1], batch):  # one image; a full batch and a leftover one
        int8_probabilities = served.probabilities(images)
        fp32_probabilities = float_model.probabilities(images)
        assert int8_probabilities.shape == fp32_probabilities.shape
        assert (int8_probabilities.argmax(1) == fp32_probabilities.argmax(1)).mean() >= 0.8
