"""Florence-2's checkpoint layouts (remote code, transformers, timm's ``davit_*_fl``): detected,
converted to this library's keys, back losslessly, and the bad inputs refused clearly."""
import json
import logging
from pathlib import Path

import pytest
import torch
from huggingface_hub.utils import EntryNotFoundError

from davit.checkpoint.card import guess_arch
from davit.checkpoint.convert import convert_file
from davit.checkpoint.formats import convert_state_dict, detect_format, from_davit, to_davit
from davit.checkpoint.io import read_checkpoint_file, save_state_dict_file
from davit.checkpoint.load import load_checkpoint, load_into
from davit.checkpoint.resolve import resolve_model
from davit.errors import CheckpointError, CheckpointFormatError, CheckpointMismatchError, DownloadError
from davit.model import DaViT, Florence2Encoder
from tests.checkpoint.fakes import FakeHub
from tests.paths import FIXTURES

SIZES = ("base", "large")
LAYOUTS = {"remote-code": "florence2", "transformers": "transformers", "timm": "timm"}
# A few of each whole checkpoint's language-model tensors (transformers' names from
# Florence2ForConditionalGeneration's state dict).
LANGUAGE_MODEL = {
    "florence2": ["language_model.model.shared.weight", "language_model.model.encoder.layers.0.fc1.weight",
                  "language_model.lm_head.weight", "language_model.final_logits_bias"],
    "transformers": ["model.language_model.shared.weight", "model.language_model.decoder.layers.0.fc1.weight",
                     "lm_head.weight"],
}
TINY_TOWER = {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8], "window_size": 3,
              "patch_kernels": [7, 3, 3, 3], "patch_strides": [4, 2, 2, 2], "patch_paddings": [3, 1, 1, 1],
              "pad_to_stride": False, "channel_attention": "florence2", "head": False}


def _table(size: str, layout: str) -> dict[str, tuple[int, ...]]:
    lines = (FIXTURES / "keys" / f"florence2-{size}.{layout}.txt").read_text().splitlines()
    return {key: tuple(int(v) for v in shape.strip("[]").split(",") if v.strip())
            for key, shape in (line.split(" ", 1) for line in lines)}


def _state(size: str, layout: str) -> dict[str, torch.Tensor]:
    """The layout's tensors: a distinct constant each (expanded, so nothing is allocated), and
    timm's untrained head.norm at LayerNorm's initial values, as timm's model holds it."""
    state = {key: torch.tensor(float(i)).expand(shape) for i, (key, shape) in enumerate(_table(size, layout).items())}
    if "head.norm.weight" in state:
        state["head.norm.weight"] = torch.ones(state["head.norm.weight"].shape)
        state["head.norm.bias"] = torch.zeros(state["head.norm.bias"].shape)
    return state


def _encoder_shapes(size: str, projector: bool = True) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = Florence2Encoder(f"florence2-{size}", projection_dim=None if projector else 0)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_is_detected_and_converts_to_the_encoders_keys(size, layout):
    state = _state(size, layout)
    fmt = LAYOUTS[layout]
    assert detect_format(state) == fmt
    ours = to_davit(state)
    assert {key: tuple(value.shape) for key, value in ours.items()} == _encoder_shapes(size, layout != "timm")
    assert _equal(from_davit(ours, fmt), state)


@pytest.mark.parametrize("size", SIZES)
def test_every_layout_converts_to_every_other_losslessly(size):
    remote = _state(size, "remote-code")
    native = convert_state_dict(remote, to="transformers")
    assert {key: tuple(value.shape) for key, value in native.items()} == _table(size, "transformers")
    assert _equal(convert_state_dict(native, to="florence2"), remote)
    tower = convert_state_dict(native, to="timm")
    assert {key: tuple(value.shape) for key, value in tower.items()} == _table(size, "timm")
    assert torch.equal(tower["head.norm.weight"], torch.ones_like(tower["head.norm.weight"]))
    back = convert_state_dict(tower, to="florence2")
    assert _equal(back, {key: value for key, value in remote.items() if key in back})
    assert set(back) == {key for key in remote if key.startswith("vision_tower.")}
    assert _equal(convert_state_dict(convert_state_dict(remote, to="davit"), to="florence2"), remote)


def test_the_remote_codes_projection_is_the_transposed_linear_weight():
    state = _state("base", "remote-code")
    state["image_projection"] = torch.randn(1024, 768)
    ours = to_davit(state)
    assert torch.equal(ours["projector.image_projection.weight"], state["image_projection"].t())
    native = from_davit(ours, "transformers")
    assert torch.equal(native["model.multi_modal_projector.image_projection.weight"], state["image_projection"].t())
    assert torch.equal(from_davit(ours, "florence2")["image_projection"], state["image_projection"])


@pytest.mark.parametrize("fmt", ["florence2", "transformers"])
def test_a_whole_checkpoints_language_model_is_skipped_in_one_log_line(fmt, caplog):
    layout = "remote-code" if fmt == "florence2" else "transformers"
    state = _state("base", layout) | {key: torch.zeros(2) for key in LANGUAGE_MODEL[fmt]}
    assert detect_format(state) == fmt
    with caplog.at_level(logging.INFO, logger="davit"):
        ours = to_davit(state)
    assert set(ours) == set(_encoder_shapes("base"))
    lines = [record.getMessage() for record in caplog.records if "language model" in record.getMessage()]
    assert lines == [f"ignored {len(LANGUAGE_MODEL[fmt])} tensor(s) of Florence-2's language model; "
                     "only the vision encoder is read"]


@pytest.mark.parametrize("fmt", ["florence2", "transformers"])
def test_a_text_only_file_holds_no_vision_tower(fmt):
    state = {key: torch.zeros(2) for key in LANGUAGE_MODEL[fmt]}
    with pytest.raises(CheckpointFormatError, match="holds no vision tower"):
        detect_format(state)
    with pytest.raises(CheckpointFormatError, match="holds no vision tower"):
        to_davit(state, fmt)


@pytest.mark.parametrize("layout", ["remote-code", "transformers"])
def test_a_projector_without_its_tower_is_refused(layout):
    state = {key: value for key, value in _state("base", layout).items() if "vision_tower" not in key}
    with pytest.raises(CheckpointFormatError, match="projector but no vision tower"):
        to_davit(state)


def test_a_trained_timm_head_norm_is_kept_as_the_classifier_norm():
    state = _state("base", "timm")
    state["head.norm.weight"] = torch.full((1024,), 0.5)
    ours = to_davit(state)
    assert torch.equal(ours["head.norm.weight"], state["head.norm.weight"])
    assert _equal(from_davit(ours, "timm"), state)


def test_the_projector_is_left_out_of_timms_tower_with_a_warning(caplog):
    ours = to_davit(_state("base", "transformers"))
    with caplog.at_level(logging.WARNING, logger="davit"):
        tower = from_davit(ours, "timm")
    assert "6 tensor(s) are not written" in caplog.text
    assert set(tower) == set(_table("base", "timm"))


def test_classification_layouts_keep_their_block_names_and_head_norm():
    with torch.device("meta"):
        state = {f"backbone.{key}": value for key, value in DaViT("base").state_dict().items()}
    timm = from_davit(state, "timm")
    assert "stages.0.blocks.0.0.attn.qkv.weight" in timm and "head.norm.weight" not in timm


@pytest.mark.parametrize("size", SIZES)
def test_florence2_towers_are_told_apart_from_davit_base_and_huge(size):
    ours = to_davit(_state(size, "transformers"))
    assert guess_arch(ours) == f"florence2-{size}"
    with torch.device("meta"):
        classic = {f"backbone.{k}": v for k, v in DaViT("base" if size == "base" else "huge").state_dict().items()}
    assert guess_arch(classic) == ("base" if size == "base" else "huge")


def test_base_weights_for_a_large_model_name_the_architecture_they_look_like():
    ours = to_davit(_state("base", "remote-code"))
    with torch.device("meta"):
        model = Florence2Encoder("florence2-large")
    with pytest.raises(CheckpointMismatchError, match="looks like florence2-base"):
        load_into(model, ours)
    with torch.device("meta"):
        backbone = DaViT("florence2-large")
    tower = {key[len("backbone."):]: value for key, value in ours.items() if key.startswith("backbone.")}
    with pytest.raises(CheckpointMismatchError, match="looks like florence2-base"):
        load_into(backbone, tower)


def _tiny_whole_checkpoint(path: Path, fmt: str) -> dict[str, torch.Tensor]:
    """A whole Florence-2 checkpoint of a tiny tower in ``fmt``, language model included; returns
    the encoder's davit-format weights."""
    torch.manual_seed(0)
    ours = Florence2Encoder(TINY_TOWER, projection_dim=12).state_dict()
    state = from_davit(ours, fmt) | {key: torch.randn(3) for key in LANGUAGE_MODEL[fmt]}
    if path.suffix == ".safetensors":
        save_state_dict_file(state, path)
    else:
        torch.save(state, path)
    return ours


def test_a_truncated_checkpoint_is_refused(tmp_path):
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = tmp_path / name
        _tiny_whole_checkpoint(path, "transformers" if name.endswith("safetensors") else "florence2")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(CheckpointError, match="truncated"):
            read_checkpoint_file(path)


@pytest.mark.parametrize("repo, filename, fmt", [
    ("microsoft/Florence-2-base", "pytorch_model.bin", "florence2"),
    ("florence-community/Florence-2-base", "model.safetensors", "transformers"),
])
def test_hub_florence2_repos_load_and_convert(repo, filename, fmt, tmp_path, monkeypatch):
    ours = _tiny_whole_checkpoint(tmp_path / filename, fmt)
    missing = {} if filename == "model.safetensors" else {"model.safetensors": EntryNotFoundError("no such file")}
    fake = FakeHub(missing, {filename: tmp_path / filename}).install(monkeypatch)
    state, card = load_checkpoint(f"hf-hub:{repo}")
    assert card is None and _equal(state, ours)
    assert fake.downloaded == [filename]
    out = convert_file(f"hf-hub:{repo}", tmp_path / "tower.safetensors", to="timm")
    assert detect_format(read_checkpoint_file(out)[0]) == "timm"


def test_florence2_repos_and_folders_describe_themselves_by_their_weights(tmp_path, monkeypatch):
    """A Florence-2 repo's config.json is transformers', not a card: the weights' shapes say
    which tower it is (bytes suffice for shapes)."""
    state = {key: torch.zeros(shape, dtype=torch.uint8) for key, shape in _table("base", "transformers").items()}
    save_state_dict_file(state, tmp_path / "model.safetensors")
    config = {"model_type": "florence2", "architectures": ["Florence2ForConditionalGeneration"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert resolve_model(str(tmp_path)).card.arch == "florence2-base"
    FakeHub({}, {name: tmp_path / name for name in ("config.json", "model.safetensors")}).install(monkeypatch)
    ref = resolve_model("hf-hub:florence-community/Florence-2-base")
    assert ref.card.arch == "florence2-base" and ref.weights == "hf-hub:florence-community/Florence-2-base"


def test_hub_florence2_offline_names_the_cache(hf_cache):
    with pytest.raises(DownloadError, match="offline") as info:
        load_checkpoint("hf-hub:microsoft/Florence-2-base")
    message = str(info.value)
    assert "model.safetensors or pytorch_model.bin" in message
    assert str(hf_cache / "models--microsoft--Florence-2-base") in message


def test_transformers_vision_backbone_gives_the_same_output_after_conversion():
    """transformers' tower, random weights, through its native layout and the converter into
    DaViT("florence2-base") (strictly): the same last-stage map."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    reference = transformers.Florence2VisionBackbone(transformers.Florence2VisionConfig(drop_path_rate=0.0)).eval()
    native = {f"model.vision_tower.{key}": value for key, value in reference.state_dict().items()}
    ours = to_davit(native)
    model = DaViT("florence2-base").eval()
    load_into(model, {key[len("backbone."):]: value for key, value in ours.items()})
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = reference(images).last_hidden_state
        actual = model(images)[-1]
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
