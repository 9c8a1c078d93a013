"""One resolver for model names, weights sources and devices."""
import pytest
import torch

from davit.checkpoint.resolve import ModelRef, fetch_weights, resolve_device, resolve_model, resolve_weights
from davit.errors import CheckpointNotFoundError, DeviceError, InvalidArgumentError, UnknownModelError
from davit.model import ARCHS, DaViTArch

MINI = {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}
MINI_ARCH = DaViTArch((8, 16, 32, 64), (1, 1, 1, 1), (1, 2, 4, 8))


def test_zoo_name():
    ref = resolve_model("davit-small_3rdparty_in1k")
    assert ref.arch == ARCHS["small"] and ref.num_classes == 1000
    assert ref.weights.startswith("https://download.openmmlab.com/") and ref.weights.endswith(".pth")
    assert resolve_model("davit-base_msft_in1k").weights == "hf-hub:timm/davit_base.msft_in1k"
    giant = resolve_model("davit-giant")
    assert (giant.arch, giant.num_classes, giant.weights) == (ARCHS["giant"], 1000, None)
    assert giant.card.arch == "giant" and giant.card.class_names[0] == "tench, Tinca tinca"


def test_architecture_name():
    assert resolve_model("tiny") == ModelRef(ARCHS["tiny"], 1000, None)


def test_json_dict_and_arch_mean_the_same():
    text = '{"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}'
    assert resolve_model(f"  {text}") == resolve_model(MINI) == resolve_model(MINI_ARCH) == ModelRef(MINI_ARCH)


@pytest.mark.parametrize("model, message", [
    ('{"embed_dims": [8, 16', "not valid JSON"),
    ({**MINI, "depth": 3}, "unknown architecture fields"),
    ({"embed_dims": [8, 16, 32, 64]}, "needs"),
    (42, "must be a name, a dict or a DaViTArch"),
])
def test_bad_architectures_are_invalid_arguments(model, message):
    with pytest.raises(InvalidArgumentError, match=message):
        resolve_model(model)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(UnknownModelError, match="Did you mean 'davit-tiny_3rdparty_in1k'"):
        resolve_model("davit-tiny_3rdparty_in1")
    with pytest.raises(ValueError, match="davit list"):  # still a ValueError for Python callers
        resolve_model("resnet50")


def test_weights_of_a_zoo_name_a_url_a_hub_name_and_a_file(tmp_path):
    assert resolve_weights("davit-tiny_msft_in1k") == "hf-hub:timm/davit_tiny.msft_in1k"
    url = "https://example.com/weights.pth"
    assert resolve_weights(url) == url
    assert resolve_weights("hf-hub:someone/model") == "hf-hub:someone/model"
    path = tmp_path / "w.pth"
    path.write_bytes(b"")
    assert resolve_weights(path) == str(path)
    assert fetch_weights(str(path)) == path


@pytest.mark.parametrize("name", ["davit-giant", "tiny"])
def test_weights_of_a_name_without_weights(name):
    with pytest.raises(InvalidArgumentError, match=f"'{name}' has no published weights"):
        resolve_weights(name)


@pytest.mark.parametrize("name", ["tiny.onnx", "tiny.xml", "tiny.pt2"])
def test_an_exported_model_is_refused_in_one_line(tmp_path, name):
    exported = tmp_path / name
    exported.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidArgumentError, match="is an exported model") as info:
        resolve_model(exported)
    assert "davit predict/serve/embed --model" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InvalidArgumentError, match="is an exported model"):  # as --checkpoint
        fetch_weights(exported)


def test_missing_file(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(CheckpointNotFoundError, match="does not exist") as info:
        fetch_weights(missing)
    assert isinstance(info.value, FileNotFoundError)


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("meta")) == torch.device("meta")
    with pytest.raises(InvalidArgumentError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(DeviceError):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_a_model_name_wins_over_a_file_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_bytes(b"")
    (tmp_path / "davit-tiny_msft_in1k").write_bytes(b"")
    with pytest.raises(InvalidArgumentError, match="no published weights"):
        resolve_weights("tiny")
    assert resolve_weights("davit-tiny_msft_in1k") == "hf-hub:timm/davit_tiny.msft_in1k"


def test_every_kind_of_source_resolves(tmp_path):
    from davit import get_model, save_pretrained
    from davit.checkpoint.io import save_state_dict_file
    from tests.paths import REPO

    model = get_model(MINI, num_classes=3)
    folder = save_pretrained(model, tmp_path / "folder")
    assert resolve_weights(folder) == str(folder / "model.safetensors")
    ref = resolve_model(str(folder))
    assert (ref.arch, ref.num_classes, ref.weights) == (MINI_ARCH, 3, str(folder))
    checkpoint = save_state_dict_file(model.state_dict(), tmp_path / "mini.pth", metadata=ref.card.to_metadata())
    assert resolve_model(checkpoint).card == ref.card
    config = tmp_path / "digits.py"
    config.write_text(f"_base_ = [{str(REPO / 'configs/davit/davit-digits_1xb64.py')!r}]\n"
                      f"load_from = {str(checkpoint)!r}\n")
    assert resolve_weights(config) == str(checkpoint)
    assert resolve_model(config).backbone_options["drop_path_rate"] == 0.0
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match="holds no model.safetensors"):
        resolve_weights(tmp_path / "empty")
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "nowhere.pth"))


def test_weights_without_a_card_or_a_standard_architecture(tmp_path):
    from davit.checkpoint.io import save_state_dict_file
    from davit.errors import CheckpointError
    from davit.model import DaViTClassifier

    path = save_state_dict_file(DaViTClassifier(MINI_ARCH, num_classes=2).state_dict(), tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="no model card.*name the architecture"):
        resolve_model(str(path))


def test_resolve_model_says_which_reading_it_took(tmp_path, caplog):
    import logging

    from davit.checkpoint.pretrained import save_pretrained
    from davit.checkpoint.resolve import SOURCE_KINDS
    from davit.model import DaViTClassifier
    from tests.helpers import MINI_ARCH, MINI_ARCH_JSON

    folder = save_pretrained(DaViTClassifier(MINI_ARCH, num_classes=2), tmp_path / "saved")
    with caplog.at_level(logging.DEBUG, logger="davit"):
        kinds = {source: resolve_model(source).kind for source in
                 ("tiny", MINI_ARCH_JSON, "davit-tiny_3rdparty_in1k", str(folder), str(folder / "model.safetensors"))}
    assert list(kinds.values()) == ["architecture", "architecture", "zoo", "folder", "file"]
    assert set(kinds.values()) <= set(SOURCE_KINDS)
    assert f"model {str(folder)!r} read as folder" in caplog.text
