"""torch.export programs and OpenVINO IR: written, reloaded and matched with PyTorch (1e-4 of the
largest output), cards read back, bad options and missing packages refused clearly."""
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from davit import save_pretrained
from davit.cli.app import run_subcommand
from davit.dtypes import cpu_int8_instructions
from davit.errors import ExportError, InvalidArgumentError, MissingDependencyError
from davit.export import export_model, plan_export, read_card, write_export
from davit.export.verify import verify_export
from tests.export.conftest import PHOTOS

openvino = pytest.importorskip("openvino")

pytestmark = pytest.mark.slow  # exports in three formats, int8 included


def _close(got, expected):
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_exported_program_from_the_cli_takes_the_cards_size_and_reloads(tiny_classifier, tmp_path, capsys):
    folder = save_pretrained(tiny_classifier, tmp_path / "ft")
    out = tmp_path / "tiny.pt2"
    assert run_subcommand("export", [str(folder), str(out), "--check-images", str(PHOTOS[0])]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert read_card(out) == tiny_classifier.card
    program = torch.export.load(out).module()
    for batch in (1, 5):  # the batch is dynamic; the size is the card's crop, 64
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            _close(program(x).numpy(), tiny_classifier(x).numpy())


def test_openvino_with_preprocessing_takes_any_photo_and_carries_the_card(tiny_classifier, pixels_plan, tmp_path):
    path = write_export(pixels_plan, tmp_path / "pixels.xml", "openvino")
    assert path.with_suffix(".bin").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["pixels.bin",
                                                                                                  "pixels.xml"]
    assert read_card(path) == tiny_classifier.card
    compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for photo in PHOTOS:
        pixels = np.array(Image.open(photo).convert("RGB"))[None]
        with torch.no_grad():
            expected = pixels_plan.module(torch.from_numpy(pixels)).numpy()
        _close(np.asarray(compiled([pixels])[0]), expected)


def test_a_difference_over_the_tolerance_is_an_error(tiny_classifier):
    plan = plan_export(tiny_classifier, (64, 64), check_images=PHOTOS[:1])
    assert [what for what, _ in plan.checks][-1] == f"{PHOTOS[0].name} (preprocessed)"

    def off_by_a_little(array):
        with torch.no_grad():
            return tiny_classifier(torch.from_numpy(array)).numpy() * 1.001

    with pytest.raises(ExportError, match="differs from PyTorch's"):
        verify_export(plan, off_by_a_little, "a runtime")
    assert verify_export(plan, off_by_a_little, "a runtime", atol=1e-2) < 1e-2


def test_missing_openvino_names_the_extra(monkeypatch, tiny_classifier, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'davit-toolkit\[openvino\]'"):
        export_model(tiny_classifier, tmp_path / "m.xml", "openvino")
    assert run_subcommand("export", ["tiny", str(tmp_path / "m.xml"), "--random-weights"]) == 1
    assert "pip install 'davit-toolkit[openvino]'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_bad_formats_and_int8_options_are_refused(tiny_classifier, tmp_path, capsys):
    with pytest.raises(InvalidArgumentError, match=r"must end in \.pt2"):
        export_model(tiny_classifier, tmp_path / "m.onnx", "exported-program")
    with pytest.raises(InvalidArgumentError, match="format must be one of"):
        export_model(tiny_classifier, tmp_path / "m.tflite", "tflite")
    for out, export_format in [("m.pt2", "exported-program"), ("m.xml", "openvino")]:
        with pytest.raises(InvalidArgumentError, match="dynamic height and width exports to onnx only"):
            export_model(tiny_classifier, tmp_path / out, export_format, dynamic_size=True)
    for options, message in [(["--int8"], "--format openvino"),
                             (["--format", "openvino", "--int8"], "needs --calibration"),
                             (["--calibration", str(tmp_path)], "go with --int8")]:
        out = "m.xml" if "openvino" in options else "m.onnx"
        assert run_subcommand("export", ["tiny", str(tmp_path / out), "--random-weights", *options]) == 1
        assert message in capsys.readouterr().err
    with pytest.raises(InvalidArgumentError, match="classifier"):
        plan_export(tiny_classifier.backbone, with_preprocessing=True)


def test_int8_openvino_from_the_cli_reports_its_agreement(tiny_classifier, tmp_path, capsys):
    folder = save_pretrained(tiny_classifier, tmp_path / "ft")
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in PHOTOS:
        (photos / photo.name).write_bytes(photo.read_bytes())
    out = tmp_path / "int8.xml"
    # no minimum: a random tiny model's top-1 on three photos hangs on roundings, and on CPUs without
    # VNNI OpenVINO's int8 products round more (the refusal itself: tests/test_quantize.py)
    assert run_subcommand("export", [str(folder), str(out), "--int8", "--calibration", str(photos),
                                     "--min-agreement", "0", "--allow-slower-int8"]) == 0
    printed = capsys.readouterr().out
    ov_model = openvino.Core().read_model(str(out))
    report = json.loads(ov_model.get_rt_info(["davit_int8"]).astype(str))
    assert f"top-1 agrees with fp32 on {100 * report['agreement']:.2f}% of 3 calibration images" in printed
    assert printed.endswith(f"wrote {out}\n")
    assert report["compared_images"] == len(PHOTOS) and report["int8_instructions"] == cpu_int8_instructions()
    assert read_card(out) == tiny_classifier.card
