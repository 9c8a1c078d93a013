"""The Hugging Face folder convention: save_pretrained, get_model(folder or hf-hub:), push_to_hub,
and timm loading our folders with the same logits."""
import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import davit
from davit import get_model, push_to_hub, save_pretrained
from davit.checkpoint import pretrained
from davit.checkpoint.card import Preprocessing
from davit.checkpoint.io import load_state_dict_file
from davit.checkpoint.pretrained import read_pretrained_config
from davit.errors import CheckpointError, InvalidArgumentError
from davit.model import DaViTArch, DaViTClassifier

NAMES = ["ant", "bee", "cat", "dog", "eel"]
MINI = DaViTArch((8, 16, 32, 64), (1, 1, 1, 1), (1, 2, 4, 8), window_size=2)


@pytest.fixture(scope="module")
def fine_tuned():
    """A 5-class tiny classifier with its class names and its own preprocessing."""
    torch.manual_seed(0)
    model = get_model("tiny", num_classes=5)
    with torch.no_grad():  # a trained-looking head, so that the logits differ
        model.head.norm.weight.normal_()
    model.class_names = list(NAMES)
    model.card = davit.ModelCard("tiny", 5, tuple(NAMES), Preprocessing(256, 224, "bilinear"))
    return model


def test_timm_layout_for_models_timm_has(fine_tuned, tmp_path):
    folder = save_pretrained(fine_tuned, tmp_path / "ft")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert (config["architecture"], config["num_classes"], config["num_features"],
            config["label_names"]) == ("davit_tiny", 5, 768, NAMES)
    pre = config["pretrained_cfg"]
    assert pre["input_size"] == [3, 224, 224] and pre["interpolation"] == "bilinear"
    assert pre["crop_pct"] == 224 / 256 and pre["crop_mode"] == "center"
    assert pre["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert config["davit"]["class_names"] == NAMES
    assert "stem.conv.weight" in load_state_dict_file(folder / "model.safetensors")


def test_timm_loads_a_fine_tuned_folder_with_the_same_logits(fine_tuned, tmp_path):
    timm = pytest.importorskip("timm")
    folder = save_pretrained(fine_tuned, tmp_path / "ft")
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert theirs.pretrained_cfg["label_names"] == NAMES
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), fine_tuned.eval()(x), atol=1e-4, rtol=0)


def test_a_folder_reads_back_with_its_card(fine_tuned, tmp_path):
    folder = save_pretrained(fine_tuned, tmp_path / "ft")
    loaded = get_model(str(folder), pretrained=True)
    assert loaded.card == fine_tuned.card and loaded.class_names == NAMES
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), fine_tuned.eval()(x))
    assert get_model("tiny", pretrained=str(folder)).class_names == NAMES  # as weights only


def test_other_architectures_use_our_own_layout(tmp_path):
    model = DaViTClassifier(MINI, num_classes=3, semantics="official")
    folder = save_pretrained(model, tmp_path / "mini")
    config = json.loads((folder / "config.json").read_text())
    assert list(config) == ["davit"]
    assert "backbone.stem.conv.weight" in load_state_dict_file(folder / "model.safetensors")
    loaded = get_model(folder, pretrained=True)
    assert loaded.arch == MINI and loaded.num_classes == 3 and loaded.class_names is None
    mm = save_pretrained(get_model("tiny", num_classes=2, semantics="mmpretrain"), tmp_path / "mm")
    assert "architecture" not in json.loads((mm / "config.json").read_text())


def test_a_timm_config_without_our_card(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"architecture": "davit_small", "num_classes": 1000, "pretrained_cfg": {
        "input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 0.95,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}))
    card = read_pretrained_config(path)
    assert card.arch == "small" and card.num_classes == 1000 and card.class_names[0] == "tench, Tinca tinca"
    assert card.preprocessing.resize_edge == 235 and card.preprocessing.mean == pytest.approx((123.675, 116.28, 103.53))
    path.write_text(json.dumps({"architecture": "resnet50"}))
    with pytest.raises(CheckpointError, match="resnet50"):
        read_pretrained_config(path)


def test_save_pretrained_refuses_other_objects(tmp_path):
    with pytest.raises(InvalidArgumentError, match="DaViT classifier"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")
    assert not (tmp_path / "x").exists()


class FakeApi:
    """Stands in for huggingface_hub's HfApi: records what would be uploaded."""

    instances: ClassVar[list] = []

    def __init__(self, token=None):
        self.token, self.calls, self.uploaded = token, [], {}
        FakeApi.instances.append(self)

    def create_repo(self, repo_id, private=None, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None):
        self.calls.append(("upload_folder", repo_id, revision, commit_message))
        self.uploaded = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        return "commit-info"


def test_push_to_hub_uploads_the_folder(fine_tuned, monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, "HfApi", FakeApi)
    FakeApi.instances.clear()
    assert push_to_hub(fine_tuned, "me/davit-ft", private=True, token="t0k") == "commit-info"
    (api,) = FakeApi.instances
    assert api.token == "t0k"
    assert api.calls == [("create_repo", "me/davit-ft", True, True),
                         ("upload_folder", "me/davit-ft", None, "Upload DaViT model")]
    assert sorted(api.uploaded) == ["config.json", "model.safetensors"]
    assert json.loads(api.uploaded["config.json"])["label_names"] == NAMES


def test_an_hf_hub_name_reads_the_repos_folder(fine_tuned, monkeypatch, tmp_path):
    import davit.checkpoint.resolve as resolve

    folder = save_pretrained(fine_tuned, tmp_path / "repo")
    asked = []

    def fake_file(name, filenames, missing_ok=False):
        asked.append((name, tuple(filenames)))
        return next((folder / f for f in filenames if (folder / f).is_file()), None)

    monkeypatch.setattr(resolve, "download_hf_file", fake_file)
    monkeypatch.setattr(resolve, "download_hf_checkpoint", lambda name: folder / "model.safetensors")
    loaded = get_model("hf-hub:me/davit-ft", pretrained=True)
    assert loaded.class_names == NAMES and loaded.card.preprocessing.resize_edge == 256
    assert asked == [("hf-hub:me/davit-ft", ("config.json",))]


def test_a_folder_without_config_or_weights_is_refused(tmp_path):
    from davit.errors import CheckpointNotFoundError

    with pytest.raises(CheckpointNotFoundError, match="holds no model.safetensors"):
        davit.get_model(str(tmp_path))
