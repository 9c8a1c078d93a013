"""The public API: the seed page's examples, get_model, inference_model, bad input."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from davit import get_model, inference_model, list_models
from davit.checkpoint.formats import from_davit
from davit.checkpoint.load import CheckpointMismatchError
from davit.data import ImageLoadError, build_test_transform, load_image
from davit.errors import InvalidArgumentError
from davit.model import DaViTClassifier
from tests.helpers import MINI_ARCH
from tests.paths import REPO

SEED_FILE = "davit-tiny_3rdparty_in1k_20221116-700fdf7d.pth"
CAT = REPO / "demo" / "cat.jpg"
COFFEE = REPO / "demo" / "coffee.jpg"


@pytest.fixture(scope="module")
def tiny_weights():
    torch.manual_seed(0)
    return DaViTClassifier("tiny").state_dict()


@pytest.fixture
def seed_cache(tmp_path, monkeypatch, tiny_weights):
    """A TORCH_HOME whose hub cache holds a random-weight mmpretrain-format checkpoint under the
    seed URL's file name, as a real download would leave it."""
    home = tmp_path / "torch_home"
    cache = home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save({"meta": {"note": "random weights"}, "state_dict": from_davit(tiny_weights, "mmpretrain")},
               cache / SEED_FILE)
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def _run_python(code, env_home):
    env = {**os.environ, "TORCH_HOME": str(env_home)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_seed_predict_example_runs_as_written(seed_cache):
    code = (
        "from davit import inference_model\n"
        "\n"
        "predict = inference_model('davit-tiny_3rdparty_in1k', 'demo/cat.jpg')\n"
        "print(predict['pred_class'])\n"
        "print(predict['pred_score'])\n"
    )
    result = _run_python(code, seed_cache)
    assert result.returncode == 0, result.stderr
    pred_class, pred_score = result.stdout.strip().splitlines()
    expected = inference_model(get_model("davit-tiny_3rdparty_in1k", pretrained=True), str(CAT))
    assert pred_class == expected["pred_class"]
    assert abs(float(pred_score) - expected["pred_score"]) < 1e-6


def test_seed_model_example_runs_as_written(seed_cache):
    code = (
        "import torch\n"
        "from davit import get_model\n"
        "\n"
        "model = get_model('davit-tiny_3rdparty_in1k', pretrained=True)\n"
        "inputs = torch.rand(1, 3, 224, 224)\n"
        "out = model(inputs)\n"
        "print(type(out))\n"
        "# To extract features.\n"
        "feats = model.extract_feat(inputs)\n"
        "print(type(feats))\n"
        "print(tuple(out.shape), [tuple(f.shape) for f in feats])\n"
    )
    result = _run_python(code, seed_cache)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines == ["<class 'torch.Tensor'>", "<class 'tuple'>", "(1, 1000) [(1, 768, 7, 7)]"]


def test_pretrained_weights_are_the_checkpoints(seed_cache, tiny_weights):
    model = get_model("davit-tiny_3rdparty_in1k", pretrained=True)
    state = model.state_dict()
    assert all(torch.equal(state[k], tiny_weights[k]) for k in tiny_weights)
    assert model.class_names[0] == "tench, Tinca tinca" and not model.training


def test_inference_matches_manual_forward(seed_cache):
    model = get_model("davit-tiny_3rdparty_in1k", pretrained=True)
    single = inference_model(model, CAT)
    batch = inference_model(model, [str(CAT), Image.open(COFFEE), np.asarray(Image.open(CAT))])
    assert set(single) == {"image", "pred_label", "pred_score", "pred_scores", "pred_class", "topk"}
    assert single["image"] == str(CAT) and "image" not in batch[1] and [r["index"] for r in batch] == [0, 1, 2]
    x = build_test_transform()(load_image(CAT)).unsqueeze(0)
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    assert single["pred_label"] == int(probs.argmax())
    np.testing.assert_allclose(single["pred_scores"], probs.numpy(), atol=1e-6)
    assert abs(single["pred_score"] - float(probs.max())) < 1e-6
    assert single["pred_class"] == model.class_names[single["pred_label"]]
    assert len(batch) == 3 and batch[0]["pred_label"] == single["pred_label"]
    np.testing.assert_allclose(batch[2]["pred_scores"], single["pred_scores"], atol=1e-5)


def test_batch_keeps_good_results_when_one_file_is_bad(tmp_path, caplog):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    model = get_model("davit-tiny", num_classes=3)
    with caplog.at_level(logging.ERROR, logger="davit"):
        results = inference_model(model, [str(CAT), str(bad), str(tmp_path / "missing.jpg"), str(COFFEE)])
    assert [("error" in r) for r in results] == [False, True, True, False]
    assert "broken.jpg" in results[1]["error"]["message"] and "missing.jpg" in results[2]["error"]["message"]
    assert "broken.jpg" in caplog.text
    assert "pred_class" not in results[0]  # 3 classes: no class names known
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        inference_model(model, str(bad))


def test_list_models_and_unknown_name_suggestions():
    names = list_models()
    assert {"davit-tiny_3rdparty_in1k", "davit-small_3rdparty_in1k", "davit-base_3rdparty_in1k",
            "davit-giant"} <= set(names)
    assert list_models("*small*", pretrained=True) == ["davit-small_3rdparty_in1k", "davit-small_msft_in1k"]
    with pytest.raises(ValueError, match="davit-tiny_3rdparty_in1k"):
        get_model("davit-tiny_3rdparty_in1")
    with pytest.raises(ValueError, match="no published weights"):
        get_model("davit-giant", pretrained=True)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    with torch.device("meta"):
        small = DaViTClassifier("small")
    small_state = {k: torch.zeros(v.shape) for k, v in small.state_dict().items()}
    path = tmp_path / "small.pth"
    torch.save(from_davit(small_state, "official"), path)
    with pytest.raises(CheckpointMismatchError, match="looks like small") as info:
        get_model("davit-tiny", pretrained=str(path))
    assert "unexpected" in str(info.value)


def test_fine_tuning_head_is_reinitialised_and_said(tmp_path, tiny_weights, caplog):
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": from_davit(tiny_weights, "mmpretrain")}, path)
    with caplog.at_level(logging.WARNING, logger="davit"):
        model = get_model("tiny", pretrained=str(path), num_classes=7)
    assert "re-initialised" in caplog.text
    assert model.head.fc.weight.shape == (7, 768)
    state = model.state_dict()
    assert torch.equal(state["head.norm.weight"], tiny_weights["head.norm.weight"])
    assert torch.equal(state["backbone.stem.conv.weight"], tiny_weights["backbone.stem.conv.weight"])
    same = get_model("tiny", pretrained=str(path))
    assert same.num_classes == 1000 and torch.equal(same.head.fc.weight, tiny_weights["head.fc.weight"])


def test_every_format_loads_to_the_same_model(tmp_path, tiny_weights):
    x = torch.rand(1, 3, 64, 64)
    outputs = []
    for fmt, suffix in [("official", ".pth"), ("mmpretrain", ".safetensors"), ("timm", ".pth"),
                        ("davit", ".safetensors")]:
        path = tmp_path / f"w-{fmt}{suffix}"
        converted = from_davit(tiny_weights, fmt)
        if suffix == ".pth":
            torch.save({"model": {f"module.{k}": v for k, v in converted.items()}}, path)
        else:
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in converted.items()}, path)
        with torch.no_grad():
            outputs.append(get_model("tiny", pretrained=str(path))(x))
    for out in outputs[1:]:
        assert torch.equal(out, outputs[0])


def test_backbone_loads_a_classifier_checkpoint(tmp_path, tiny_weights, caplog):
    from davit.checkpoint.load import load_pretrained
    from davit.model import DaViT

    path = tmp_path / "tiny-timm.pth"
    torch.save(from_davit(tiny_weights, "timm"), path)
    backbone = DaViT("tiny", out_indices=(0, 1, 2, 3))
    with caplog.at_level(logging.INFO, logger="davit"):
        load_pretrained(backbone, path)
    assert "head.fc.weight" in caplog.text
    assert torch.equal(backbone.stem.conv.weight, tiny_weights["backbone.stem.conv.weight"])


def test_inference_goes_through_the_evaluation_primitive(monkeypatch):
    import davit.api
    from davit.engine.predict import class_probabilities

    calls = []

    def spy(model, images, amp=None):
        calls.append((images.shape[0], amp))
        return class_probabilities(model, images, amp=amp)

    monkeypatch.setattr(davit.api, "class_probabilities", spy)
    model = get_model("davit-tiny", num_classes=3)
    results = inference_model(model, [str(CAT), str(COFFEE), str(CAT)], batch_size=2)
    assert calls == [(2, None), (1, None)] and len(results) == 3


def test_bad_arguments_are_davit_errors(tmp_path):
    from davit.errors import DavitError, InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="batch_size"):
        inference_model(get_model("davit-tiny", num_classes=3), str(CAT), batch_size=0)
    with pytest.raises(InvalidArgumentError, match="custom architecture has no published weights"):
        get_model(MINI_ARCH, pretrained=True)
    with pytest.raises(InvalidArgumentError, match="pretrained must be"):
        get_model("tiny", pretrained=3)
    with pytest.raises(DavitError, match="does not exist"):
        get_model("tiny", pretrained=str(tmp_path / "nowhere.pth"))


DIGITS = REPO / "configs" / "davit" / "davit-digits_1xb64.py"


def test_a_config_file_is_a_model_with_its_test_pipeline(tmp_path):
    model = get_model(str(DIGITS))
    assert model.arch.embed_dims == (32, 64, 128, 256) and model.num_classes == 10
    pre = model.card.preprocessing
    assert (pre.resize_edge, pre.crop_size, pre.mean) == (32, 32, (64.0, 64.0, 64.0))
    with pytest.raises(InvalidArgumentError, match="no load_from"):
        get_model(str(DIGITS), pretrained=True)


def test_mmpretrain_idiom_config_image_and_pretrained(tmp_path):
    torch.manual_seed(0)
    trained = get_model(str(DIGITS))
    path = tmp_path / "digits.pth"
    torch.save({"state_dict": trained.state_dict()}, path)  # no card: the config gives it
    result = inference_model(str(DIGITS), str(CAT), pretrained=str(path))
    with torch.no_grad():
        expected = trained(build_test_transform(32, 32, (64.0,) * 3, (96.0,) * 3)(CAT).unsqueeze(0))
    np.testing.assert_allclose(result["pred_scores"], expected.softmax(-1)[0].numpy(), atol=1e-6)
    assert "pred_class" not in result  # ten classes, no names known


def test_cli_errors_do_not_speak_python(capsys, tmp_path):
    from davit.cli.app import run_subcommand

    custom = '{"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}'
    assert run_subcommand("export", [custom, str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "no published weights" in err and "pretrained=" not in err


def test_a_checkpoint_without_card_named_as_the_model_is_read_once(tmp_path, tiny_weights, monkeypatch):
    """Guessing the card of a cardless file reads its tensors; loading reuses them."""
    import davit.checkpoint.resolve as resolve

    path = tmp_path / "published-tiny.pth"
    torch.save({"state_dict": from_davit(tiny_weights, "mmpretrain")}, path)
    reads = []
    original = resolve.load_state_dict_file
    monkeypatch.setattr(resolve, "load_state_dict_file", lambda p: reads.append(p) or original(p))
    from davit.checkpoint import load as load_module
    monkeypatch.setattr(load_module, "read_checkpoint_file",
                        lambda p: pytest.fail(f"{p} was read a second time"))
    model = get_model(str(path))
    assert reads == [path]
    assert torch.equal(model.head.fc.weight, tiny_weights["head.fc.weight"])
