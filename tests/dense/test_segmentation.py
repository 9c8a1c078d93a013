import subprocess
import sys
import time

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file

import davit.dense
from davit.checkpoint.formats import from_davit
from davit.dense import segmentation
from davit.errors import InvalidArgumentError, MissingDependencyError
from davit.model import DaViTClassifier


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_importing_registers_the_encoders():
    assert set(davit.dense.ENCODERS) <= set(smp.encoders.get_encoder_names())
    settings = smp.encoders.encoders["davit-tiny"]["pretrained_settings"]
    assert settings["imagenet"].get("repo_id") == "timm/davit_tiny.msft_in1k"
    florence = smp.encoders.encoders["davit-florence2-large"]["pretrained_settings"]
    assert florence["florence2"].get("repo_id") == "florence-community/Florence-2-large"


@pytest.mark.parametrize("decoder", [smp.UPerNet, smp.FPN, smp.Unet])
def test_tiny_segments_and_trains(decoder):
    torch.manual_seed(0)
    model = decoder(encoder_name="davit-tiny", encoder_weights=None, classes=3)
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 3, 64, 64)
    out.square().mean().backward()
    assert model.encoder.backbone.stem.conv.weight.grad is not None


def test_encoder_features_depth_and_input_channels():
    encoder = davit.dense.DaViTEncoder({"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1],
                                        "num_heads": [1, 2, 4, 8]}, depth=4)
    features = encoder(torch.rand(1, 3, 64, 32))
    assert [tuple(f.shape[1:]) for f in features] == [(3, 64, 32), (0, 32, 16), (8, 16, 8), (16, 8, 4), (32, 4, 2)]
    assert encoder.out_channels == [3, 0, 8, 16, 32]
    model = smp.Unet(encoder_name="davit-tiny", encoder_weights=None, encoder_depth=4, in_channels=1,
                     decoder_channels=(64, 32, 16, 8), classes=2)
    assert model.encoder.out_channels == [1, 0, 96, 192, 384]
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 2, 64, 64)
    with pytest.raises(InvalidArgumentError, match="output stride 32"):
        smp.DeepLabV3Plus(encoder_name="davit-tiny", encoder_weights=None, encoder_output_stride=16)


@pytest.mark.parametrize(("name", "widths", "encoder_params"), [
    ("davit-small", [96, 192, 384, 768], 48_978_240),
    ("davit-base", [128, 256, 512, 1024], 86_931_200),
    ("davit-florence2-base", [128, 256, 512, 1024], 90_371_840),
    ("davit-florence2-large", [256, 512, 1024, 2048], 360_640_000),
])
def test_bigger_encoders_build(name, widths, encoder_params):
    with torch.device("meta"):
        models = [decoder(encoder_name=name, encoder_weights=None, classes=150)
                  for decoder in (smp.UPerNet, smp.FPN, smp.Unet)]
    for model in models:
        assert model.encoder.out_channels == [3, 0, *widths]
        assert _count(model.encoder) == encoder_params


@pytest.fixture(scope="module")
def timm_weights() -> tuple[DaViTClassifier, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    classifier = DaViTClassifier("tiny")
    return classifier, from_davit(classifier.state_dict(), "timm")


def _same_backbone(encoder: torch.nn.Module, classifier: DaViTClassifier) -> None:
    ours, theirs = encoder.backbone.state_dict(), classifier.backbone.state_dict()
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
    assert set(ours) - set(theirs) == {f"out_norms.{i}.{p}" for i in range(4) for p in ("weight", "bias")}
    assert torch.equal(ours["out_norms.3.weight"], torch.ones(768))


def test_encoder_weights_come_through_smp(monkeypatch, timm_weights):
    """smp downloads the registered repo's model.safetensors and hands it to the encoder."""
    classifier, weights = timm_weights
    fetched = []
    monkeypatch.setattr(segmentation, "download_hf_file", lambda name, filenames: None)  # the quick probe
    monkeypatch.setattr(smp.encoders, "hf_hub_download", lambda repo, filename, revision: fetched.append(repo))
    monkeypatch.setattr(smp.encoders, "load_file", lambda path, device: dict(weights))
    model = smp.FPN(encoder_name="davit-tiny", encoder_weights="imagenet", classes=2)
    assert fetched == ["timm/davit_tiny.msft_in1k"] * 2
    _same_backbone(model.encoder, classifier)
    own = model.encoder.state_dict()
    model.encoder.load_state_dict(own)  # its own keys load as any module's


def test_encoder_weights_offline_fail_at_once_naming_the_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from davit.errors import DownloadError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    started = time.monotonic()
    with pytest.raises(DownloadError) as info:
        smp.FPN(encoder_name="davit-tiny", encoder_weights="imagenet", classes=2)
    message = str(info.value)
    assert time.monotonic() - started < 5  # not huggingface_hub's retries
    assert str(tmp_path / "hub") in message and "encoder_weights=None" in message and "\n" not in message


def test_segmentation_model_takes_any_weights_and_options(tmp_path, timm_weights):
    classifier, weights = timm_weights
    path = tmp_path / "davit_tiny.safetensors"
    save_file(weights, str(path))
    model = davit.dense.segmentation_model("upernet", "davit-tiny", classes=4, backbone_weights=path,
                                           frozen_stages=2, decoder_channels=64)
    _same_backbone(model.encoder, classifier)
    assert not any(p.requires_grad for p in model.encoder.backbone.stages[1].parameters())
    assert all(p.requires_grad for p in model.encoder.backbone.stages[2].parameters())
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 4, 64, 64)
    with pytest.raises(InvalidArgumentError, match="unknown DaViT encoder"):
        davit.dense.segmentation_model("fpn", "resnet34")


def test_a_registered_custom_encoder_builds_and_takes_a_checkpoint(tmp_path):
    arch = {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8], "window_size": 4}
    assert davit.dense.register_encoder("davit-test-mini", arch) == "davit-test-mini"
    model = smp.UPerNet(encoder_name="davit-test-mini", encoder_weights=None, classes=3, decoder_channels=16)
    assert model.encoder.out_channels == [3, 0, 8, 16, 32, 64]
    torch.manual_seed(2)
    classifier = DaViTClassifier(arch, num_classes=10)
    path = tmp_path / "mini.pth"
    torch.save(classifier.state_dict(), path)
    model = davit.dense.segmentation_model("upernet", "davit-test-mini", classes=3, backbone_weights=path,
                                           decoder_channels=16)
    assert torch.equal(model.encoder.backbone.stem.conv.weight, classifier.backbone.stem.conv.weight)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 3, 64, 64)
    with pytest.raises(InvalidArgumentError, match="no published weights"):
        davit.dense.segmentation_model("upernet", "davit-test-mini", backbone_weights=True)
    with pytest.raises(InvalidArgumentError, match="built-in"):
        davit.dense.register_encoder("davit-tiny", arch)


def test_without_smp_detection_imports_and_segmentation_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'davit-toolkit\[dense\]'"):
        davit.dense.segmentation_model("fpn", "davit-tiny")
    script = ("import sys; sys.modules['segmentation_models_pytorch'] = None; import davit.dense; "
              "print(davit.dense.maskrcnn.__name__)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "maskrcnn"
