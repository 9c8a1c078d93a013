"""The dense backbone: the official dense semantics (per-stage LayerNorms, NCHW), freezing, drop
path, checkpointing, and every checkpoint layout loaded into it."""
import logging
from collections import OrderedDict
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from davit.checkpoint.formats import detect_format, from_davit
from davit.checkpoint.io import load_state_dict_file
from davit.checkpoint.load import load_backbone
from davit.cli.app import run_subcommand
from davit.dense import DenseBackbone, backbone, save_backbone
from davit.errors import CheckpointMismatchError, InvalidArgumentError
from davit.model import ARCHS, DaViTClassifier, Florence2Encoder
from davit.zoo import MODELS
from tests.paths import FIXTURES

ARCH = {"embed_dims": [16, 32, 64, 128], "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8], "window_size": 4}
FLORENCE2 = replace(ARCHS["florence2-base"], embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1),
                    num_heads=(1, 2, 4, 8))


def _randomise_norms(model: DenseBackbone) -> None:
    with torch.no_grad():
        for norm in model.out_norms:
            for param in norm.parameters():
                param.normal_()


def _official_dense_features(stages: list[torch.Tensor], model: DenseBackbone) -> list[torch.Tensor]:
    """What the official dense backbone returns: each output stage through its own LayerNorm, NCHW."""
    return [F.layer_norm(stages[i], stages[i].shape[-1:], model.out_norms[i].weight, model.out_norms[i].bias)
            .permute(0, 3, 1, 2) for i in model.out_indices]


def _from_table(name: str) -> dict[str, torch.Tensor]:
    lines = (FIXTURES / "keys" / name).read_text().splitlines()
    rows = (line.split(" ", 1) for line in lines)
    return {key: torch.randn([int(v) for v in shape.strip("[]").split(",")]) for key, shape in rows}


def _records(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.mark.parametrize("size", [(224, 224), (97, 130)])
@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3), (1, 3)])
def test_features_are_the_official_dense_backbones(size, out_indices):
    torch.manual_seed(0)
    classifier = DaViTClassifier(ARCH).eval()
    dense = backbone(ARCH, out_indices=out_indices).eval()
    load_backbone(dense, classifier.state_dict())
    _randomise_norms(dense)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        features = dense(x)
        expected = _official_dense_features(classifier.backbone.forward_stages(x), dense)
    assert len(features) == len(out_indices)
    for got, want, channels, stride in zip(features, expected, dense.out_channels, dense.strides):
        assert got.shape[1] == channels and got.shape[2] == -(-size[0] // stride)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert dense.feature_info == [{"num_chs": c, "reduction": s, "module": f"out_norms.{i}"}
                                  for i, c, s in zip(out_indices, dense.out_channels, dense.strides)]


def test_frozen_stages_freeze_their_blocks_and_output_norms_in_eval_mode():
    model = backbone(ARCH, frozen_stages=2).train()
    frozen = ("stem.", "stages.0.", "stages.1.", "out_norms.0.", "out_norms.1.")
    for name, param in model.named_parameters():
        assert param.requires_grad != name.startswith(frozen), name
    for name, module in model.named_modules():
        if name:
            assert module.training != name.startswith(tuple(p.rstrip(".") for p in frozen)), name


def test_drop_path_is_active_in_training_only():
    torch.manual_seed(0)
    model = backbone(ARCH, drop_path_rate=0.3)
    x = torch.randn(2, 3, 64, 64)
    train = [model.train()(x)[-1] for _ in range(2)]
    evaluation = [model.eval()(x)[-1] for _ in range(2)]
    assert not torch.allclose(*train)
    assert torch.equal(*evaluation)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = backbone(ARCH)
    checkpointed = backbone(ARCH, grad_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 80)
    for model in (plain, checkpointed):
        sum(feature.square().mean() for feature in model(x)).backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.mark.parametrize("fmt", ["official", "mmpretrain", "timm"])
def test_a_classification_checkpoint_loads_reporting_the_head_and_the_new_norms(fmt, tmp_path, caplog):
    torch.manual_seed(0)
    classifier = DaViTClassifier(ARCH)
    path = tmp_path / f"classifier-{fmt}.pth"
    torch.save({"state_dict": from_davit(classifier.state_dict(), fmt)}, path)
    with caplog.at_level(logging.INFO, logger="davit"):
        model = backbone(ARCH, pretrained=path, out_indices=(1, 2, 3))
    (dropped,) = _records(caplog, "dropped")
    assert "head.fc.weight" in dropped and "head.norm.bias" in dropped
    (initialised,) = _records(caplog, "initialised")
    assert "out_norms.1, out_norms.2, out_norms.3" in initialised
    for key, value in model.state_dict().items():
        if key.startswith("out_norms."):
            assert torch.equal(value, torch.ones_like(value) if key.endswith("weight") else torch.zeros_like(value))
        else:
            assert torch.equal(value, classifier.state_dict()[f"backbone.{key}"]), key


@pytest.fixture(scope="module")
def official_dense():
    torch.manual_seed(0)
    return _from_table("davit-tiny.official-dense.txt")


@pytest.mark.parametrize("prefixed", [False, True])
def test_the_official_dense_layout_loads_and_round_trips_through_convert(official_dense, prefixed, tmp_path, caplog):
    """A backbone file (plain keys) or an mmdet detector's checkpoint (``backbone.`` keys, a neck
    besides) starts the backbone, named as the model; ``davit convert`` writes both layouts back."""
    stored = {f"backbone.{k}": v for k, v in official_dense.items()} if prefixed else official_dense
    neck = {"neck.lateral_convs.0.conv.weight": torch.zeros(1)} if prefixed else {}
    path = tmp_path / "dense.pth"
    torch.save({"state_dict": stored | neck, "meta": {"mmdet_version": "2.11.0"}}, path)
    with caplog.at_level(logging.INFO, logger="davit"):
        model = backbone(str(path), out_indices=(1, 2, 3))
    assert _records(caplog, "dropped") == ["loading a backbone: dropped 2 tensor(s) it has no place for (classifier, "
                                           "projector, norms of stages it does not output): "
                                           "backbone.out_norms.0.weight, backbone.out_norms.0.bias"]
    assert not _records(caplog, "initialised")
    assert torch.equal(model.stem.conv.weight, official_dense["patch_embeds.0.proj.weight"])
    assert torch.equal(model.out_norms[3].bias, official_dense["norm3.bias"])
    fmt = "mmdet" if prefixed else "official-dense"
    other = "official-dense" if prefixed else "mmdet"
    there, back = tmp_path / "there.safetensors", tmp_path / "back.pth"
    assert run_subcommand("convert", [str(path), str(there), "--to", other]) == 0
    assert detect_format(load_state_dict_file(there)) == other
    assert run_subcommand("convert", [str(there), str(back), "--to", fmt]) == 0
    again = load_state_dict_file(back)
    assert again.keys() == stored.keys() and all(torch.equal(again[k], stored[k]) for k in stored)


def test_pretrained_true_takes_the_zoo_entrys_weights(tmp_path, monkeypatch, caplog):
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    weights = _from_table("davit-tiny.official.txt")
    torch.save(weights, cache / MODELS["davit-tiny_3rdparty_in1k"].weights.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with caplog.at_level(logging.INFO, logger="davit"):
        model = backbone("davit-tiny_3rdparty_in1k", pretrained=True, frozen_stages=1)
    assert torch.equal(model.stages[2].blocks[1].channel.attn.qkv.weight, weights["main_blocks.2.1.1.attn.qkv.weight"])
    assert len(_records(caplog, "dropped")) == len(_records(caplog, "initialised")) == 1


def test_a_checkpoint_of_another_width_is_refused_naming_what_it_looks_like(tmp_path):
    path = tmp_path / "narrow.pth"
    narrow = {**ARCH, "embed_dims": [8, 16, 32, 64]}
    torch.save(from_davit(DaViTClassifier(narrow).state_dict(), "official"), path)
    with pytest.raises(CheckpointMismatchError, match=r"looks like embed_dims=\[8, 16, 32, 64\].*mis-shaped"):
        backbone(ARCH, pretrained=path)


def test_too_small_images_and_bad_out_indices_are_refused():
    with pytest.raises(InvalidArgumentError, match="at least 32 pixels a side .* got 31 x 64"):
        backbone(ARCH)(torch.randn(1, 3, 31, 64))
    assert [f.shape[-1] for f in backbone(ARCH, out_indices=(0, 1))(torch.randn(1, 3, 8, 8))] == [2, 1]
    with pytest.raises(InvalidArgumentError, match="out_indices entry 4 is out of range for 4 stages"):
        backbone(ARCH, out_indices=(2, 4))
    with pytest.raises(InvalidArgumentError, match="frozen_stages"):
        backbone(ARCH, frozen_stages=5)


def test_a_florence2_tower_is_a_dense_backbone(tmp_path, caplog):
    torch.manual_seed(0)
    encoder = Florence2Encoder(FLORENCE2, projection_dim=12).eval()
    path = tmp_path / "pytorch_model.bin"
    torch.save(from_davit(encoder.state_dict(), "florence2"), path)
    with caplog.at_level(logging.INFO, logger="davit"):
        model = backbone(FLORENCE2, pretrained=path).eval()
    (dropped,) = _records(caplog, "dropped")
    assert "6 tensor(s)" in dropped and "projector.image_projection.weight" in dropped
    assert len(_records(caplog, "initialised")) == 1
    _randomise_norms(model)
    x = torch.randn(1, 3, 97, 130)
    with torch.no_grad():
        features, expected = model(x), _official_dense_features(encoder.backbone.forward_stages(x), model)
    for got, want in zip(features, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_torchvisions_feature_pyramid_takes_its_out_channels():
    from torchvision.ops import FeaturePyramidNetwork

    model = backbone(ARCH, out_indices=(1, 2, 3)).eval()
    fpn = FeaturePyramidNetwork(model.out_channels, 24).eval()
    with torch.no_grad():
        pyramid = fpn(OrderedDict((str(i), f) for i, f in enumerate(model(torch.randn(1, 3, 64, 96)))))
    assert [tuple(p.shape[1:]) for p in pyramid.values()] == [(24, 8, 12), (24, 4, 6), (24, 2, 3)]


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_saved_backbone_builds_again_from_its_file(tmp_path, suffix):
    torch.manual_seed(0)
    model = backbone(ARCH, pretrained=False, semantics="mmpretrain", frozen_stages=1).eval()
    _randomise_norms(model)
    x = torch.rand(1, 3, 64, 64)
    path = save_backbone(model, tmp_path / f"bb{suffix}")
    again = backbone(str(path)).eval()  # the file alone: its card names the architecture and semantics
    assert again.semantics == "mmpretrain" and again.embed_dims == model.embed_dims
    assert all(torch.equal(a, b) for a, b in zip(model(x), again(x)))
    mmdet = tmp_path / "mmdet.pth"
    assert run_subcommand("convert", [str(path), str(mmdet), "--to", "mmdet"]) == 0
    assert all(torch.equal(a, b) for a, b in zip(model(x), backbone(ARCH, pretrained=str(mmdet)).eval()(x)))
    with pytest.raises(InvalidArgumentError, match="save_pretrained"):
        save_backbone(DaViTClassifier(ARCH, num_classes=3), tmp_path / "no.safetensors")
