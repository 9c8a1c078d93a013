"""The model card: serialisation, validation, checkpoint metadata, and every loader reading it."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from davit import get_model, inference_model
from davit.checkpoint.card import (
    CARD_KEY,
    FLORENCE2_PREPROCESSING,
    ModelCard,
    Preprocessing,
    card_from_metadata,
    default_card,
    guess_arch,
    guessed_card,
)
from davit.checkpoint.convert import convert_file
from davit.checkpoint.formats import from_davit
from davit.checkpoint.io import read_checkpoint_file, read_metadata, save_state_dict_file
from davit.checkpoint.load import load_checkpoint
from davit.config import load_config
from davit.config.specs import model_spec
from davit.data import TestTransform
from davit.engine.train_checkpoint import run_meta
from davit.errors import CheckpointError, CheckpointMismatchError, InvalidArgumentError
from davit.model import ARCHS, DaViT, DaViTArch, DaViTClassifier
from tests.paths import REPO

MINI = DaViTArch((8, 16, 32, 64), (1, 1, 1, 1), (1, 2, 4, 8), window_size=2)
DIGITS = REPO / "configs" / "davit" / "davit-digits_1xb64.py"
NAMES = ("ant", "bee", "cat")
PRE = Preprocessing(40, 32, "bilinear", (64.0, 64.0, 64.0), (96.0, 96.0, 96.0))


def _card(**changes) -> ModelCard:
    return ModelCard(**{"arch": MINI, "num_classes": 3, "class_names": NAMES, "preprocessing": PRE,
                        **changes})


@pytest.fixture
def mini_checkpoint(tmp_path):
    """A 3-class custom-architecture checkpoint carrying its card, as .pth."""
    torch.manual_seed(0)
    model = DaViTClassifier(MINI, num_classes=3)
    path = tmp_path / "mini.pth"
    save_state_dict_file(model.state_dict(), path, metadata=_card().to_metadata())
    return path, model


@pytest.mark.parametrize("card", [_card(), _card(arch="tiny", num_classes=2, class_names=("a", "b")),
                                  default_card("small", 1000), default_card("florence2-base", 0)])
def test_dict_json_and_metadata_round_trips(card):
    assert ModelCard.from_dict(card.to_dict()) == card
    assert ModelCard.from_dict(json.loads(card.to_json())) == card
    assert card_from_metadata(card.to_metadata()) == card
    assert all(isinstance(value, str) for value in card.to_metadata().values())


def test_default_card_is_todays_defaults():
    card = default_card("tiny", 1000)
    assert (card.preprocessing.resize_edge, card.preprocessing.crop_size,
            card.preprocessing.interpolation) == (236, 224, "bicubic")
    assert card.class_names[0] == "tench, Tinca tinca" and len(card.class_names) == 1000
    assert default_card(MINI, 10).class_names is None


def test_florence2_towers_get_florence2s_processor():
    card = default_card("florence2-large", 0)
    assert card.num_classes == 0 and card.class_names is None
    assert card.preprocessing == FLORENCE2_PREPROCESSING
    assert card.preprocessing.exact_size == (768, 768) and card.preprocessing.interpolation == "bicubic"
    assert card.to_dict()["preprocessing"]["exact_size"] == [768, 768]
    assert Preprocessing.of(TestTransform(exact_size=(768, 768))).exact_size == (768, 768)


def test_cards_without_exact_size_serialise_as_before():
    """Older versions refuse unknown fields: a DaViT card must not write the new one."""
    assert set(default_card("tiny", 1000).to_dict()["preprocessing"]) == {
        "resize_edge", "crop_size", "interpolation", "mean", "std"}
    older = {**_card().to_dict(), "preprocessing": {"resize_edge": 40, "crop_size": 32}}
    assert ModelCard.from_dict(older).preprocessing.exact_size is None


@pytest.mark.parametrize("tower, classifier", [("florence2-base", "base"), ("florence2-large", "large")])
def test_florence2_towers_are_told_from_davits_of_the_same_widths(tower, classifier):
    """Florence-2 base has DaViT base's widths and depths; its 3x3 downsamples tell them apart."""
    for name, expected_classes in ((tower, 0), (classifier, 1000)):
        with torch.device("meta"):
            state = {f"backbone.{k}": v for k, v in DaViT(name).state_dict().items()}
        assert guess_arch(state) == name
        assert guessed_card(state).num_classes == expected_classes


@pytest.mark.parametrize("change, message", [
    (lambda d: {**d, "license": "mit"}, r"fields \['license'\].*newer version"),
    (lambda d: {**d, "preprocessing": {**d["preprocessing"], "antialias": True}}, "newer version"),
    (lambda d: {**d, "class_names": ["ant"]}, "1 class names for 3 classes"),
    (lambda d: {**d, "num_classes": -1}, "non-negative"),
    (lambda d: {**d, "arch": "tinyy"}, "unknown DaViT architecture"),
    (lambda d: {**d, "semantics": "keras"}, "semantics"),
    (lambda d: {**d, "preprocessing": {**d["preprocessing"], "crop_size": 0}}, "crop_size"),
    (lambda d: {**d, "preprocessing": {**d["preprocessing"], "exact_size": [0, 768]}}, "exact_size"),
    (lambda d: {k: v for k, v in d.items() if k != "num_classes"}, "num_classes"),
    (lambda d: ["not", "a", "dict"], "JSON object"),
])
def test_invalid_cards_are_checkpoint_errors(change, message):
    with pytest.raises(CheckpointError, match=message):
        ModelCard.from_dict(change(_card().to_dict()), "x.pth")


def test_a_card_that_is_not_json():
    with pytest.raises(CheckpointError, match="not valid JSON"):
        card_from_metadata({CARD_KEY: "{arch: tiny"})
    with pytest.raises(InvalidArgumentError, match="2 class names"):
        ModelCard("tiny", 3, ("a", "b"))


def test_a_card_must_describe_its_tensors(tmp_path, mini_checkpoint):
    _, model = mini_checkpoint
    state = model.state_dict()
    with pytest.raises(CheckpointMismatchError, match="says 5 classes but its classifier has 3"):
        _card(num_classes=5, class_names=None).check(state)
    with pytest.raises(CheckpointMismatchError, match=r"depths=\[1, 1, 3, 1\].*tensors have"):
        _card(arch="tiny").check(state)
    bad = tmp_path / "bad.safetensors"
    save_state_dict_file(state, bad, metadata=_card(arch="tiny").to_metadata())
    with pytest.raises(CheckpointMismatchError, match="inconsistent"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointMismatchError):  # nothing written half-way
        convert_file(bad, tmp_path / "out.pth", to="official")
    assert not (tmp_path / "out.pth").exists()


def test_legacy_training_meta_gives_a_default_card():
    card = card_from_metadata({"arch": MINI.to_dict(), "num_classes": 3, "semantics": "mmpretrain"})
    assert card == ModelCard(MINI, 3, None, Preprocessing(), "mmpretrain")
    assert card_from_metadata({"note": "random weights"}) is None


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_custom_fine_tuned_checkpoint_rebuilds_itself(tmp_path, mini_checkpoint, suffix):
    _, model = mini_checkpoint
    path = tmp_path / f"copy{suffix}"
    save_state_dict_file(model.state_dict(), path, metadata=_card().to_metadata())
    assert json.loads(read_metadata(path)[CARD_KEY])["class_names"] == list(NAMES)
    loaded = get_model(str(path), pretrained=True)
    assert loaded.arch == MINI and loaded.class_names == list(NAMES) and loaded.card == _card()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    fresh = get_model("tiny")
    assert fresh.card.architecture == ARCHS["tiny"] and fresh.card.num_classes == 1000


def test_inference_uses_the_cards_preprocessing(mini_checkpoint):
    path, _ = mini_checkpoint
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    result = inference_model(str(path), image)  # the mmpretrain idiom: a source, its own weights
    model = get_model(str(path), pretrained=True)
    with torch.no_grad():
        expected = model(PRE.transform()(image).unsqueeze(0)).softmax(-1)[0]
    np.testing.assert_allclose(result["pred_scores"], expected.numpy(), atol=1e-6)
    assert result["pred_class"] == NAMES[int(expected.argmax())]
    fresh = DaViTClassifier(MINI, num_classes=3)
    again = inference_model(fresh, image, pretrained=str(path))  # a model and a checkpoint
    assert fresh.card == _card() and again["pred_class"] == result["pred_class"]
    np.testing.assert_allclose(again["pred_scores"], result["pred_scores"], atol=1e-6)


def test_a_checkpoint_of_another_architecture_names_the_problem(mini_checkpoint):
    path, _ = mini_checkpoint
    with pytest.raises(CheckpointMismatchError, match="another architecture.*by itself"):
        get_model("davit-tiny", pretrained=str(path))


def test_training_checkpoints_record_the_card(tmp_path):
    cfg = load_config(DIGITS)
    spec = model_spec(cfg["model"])
    names = [str(digit) for digit in range(10)]
    meta = run_meta(0, 1, 64, spec, cfg, names)
    card = card_from_metadata(meta)
    assert card.class_names == tuple(names) and card.architecture == spec.arch
    assert card.preprocessing == Preprocessing(32, 32, "bicubic", (64.0,) * 3, (96.0,) * 3)
    model = DaViTClassifier(spec.arch, num_classes=10)
    path = tmp_path / "best.pth"
    torch.save({"meta": meta, "state_dict": model.state_dict(), "optimizer": {}, "epoch": 3}, path)
    loaded = get_model(str(path), pretrained=True)
    assert loaded.class_names == names and loaded.card.preprocessing.crop_size == 32
    assert read_checkpoint_file(path)[1][CARD_KEY] == meta[CARD_KEY]


def test_convert_keeps_or_synthesises_the_card(tmp_path, mini_checkpoint):
    path, _ = mini_checkpoint
    out = convert_file(path, tmp_path / "mini-official.safetensors", to="official")
    assert card_from_metadata(read_metadata(out)) == _card()
    torch.manual_seed(0)
    plain = tmp_path / "tiny.pth"
    torch.save({"state_dict": from_davit(DaViTClassifier("tiny", num_classes=4).state_dict(), "mmpretrain")},
               plain)
    out = convert_file(plain, tmp_path / "tiny.safetensors", to="timm")
    assert card_from_metadata(read_metadata(out)) == default_card("tiny", 4)
