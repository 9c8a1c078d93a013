"""The fast forward paths compute the official model: bfloat16, gradients, grouping, compile."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from davit.checkpoint.formats import from_davit, to_davit
from davit.data import build_test_transform
from davit.model import DaViTClassifier
from davit.model.backbone import _images_per_group
from davit.model.blocks import ChannelAttention, ResidualDepthwiseConv

from .conftest import FIXTURES, REPO

MINI = {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8]}


def _golden_model(golden, golden_arch):
    arch, num_classes = golden_arch
    model = DaViTClassifier(arch, num_classes=num_classes).eval()
    model.load_state_dict(to_davit(golden["state_dict_official"]))
    return model


@pytest.mark.parametrize("name", ["x224", "x_odd"])
@pytest.mark.parametrize("precision", ["autocast", "pure"])
def test_bfloat16_logits_match_golden(golden, golden_arch, name, precision):
    model = _golden_model(golden, golden_arch)
    x = golden["inputs"][name]
    expected = golden["outputs"][f"official_logits_{name}"]
    with torch.no_grad():
        if precision == "pure":
            logits = model.bfloat16()(x.bfloat16())
        else:
            with torch.autocast("cpu", torch.bfloat16):
                logits = model(x)
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - expected).abs().max() <= 2e-2 * expected.abs().max()


def _photo_crops(count_per_image: int = 4) -> torch.Tensor:
    """Random crops (and mirror images) of the demo photos and the non-constant fixture PNGs."""
    paths = [REPO / "demo" / "cat.jpg", REPO / "demo" / "coffee.jpg",
             *sorted((FIXTURES / "mmpretrain_pipeline").glob("*.png"))]
    transform = build_test_transform()
    generator = torch.Generator().manual_seed(0)
    crops = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        if np.asarray(image).std() < 1:  # a constant image has no top-1 to agree on
            continue
        width, height = image.size
        for i in range(count_per_image):
            scale = 0.5 + 0.5 * float(torch.rand(1, generator=generator))
            w, h = max(1, int(width * scale)), max(1, int(height * scale))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            crop = image.crop((left, top, left + w, top + h))
            crops.append(transform(crop.transpose(Image.FLIP_LEFT_RIGHT) if i % 2 else crop))
    return torch.stack(crops)


def test_bfloat16_top1_agrees_with_float32_on_photos():
    """DaViT-tiny with timm's random initialisation, on crops of real photos.

    Random weights give some near-ties; top-1 agreement is counted where float32's two best
    logits differ by at least 1% of the largest logit (bfloat16 resolves 0.4%), which must be
    most of the images.
    """
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("davit_tiny")
    model = DaViTClassifier("tiny").eval()
    model.load_state_dict(to_davit(reference.state_dict()))
    x = _photo_crops()
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", torch.bfloat16):
            autocast = model(x).float()
        pure = model.bfloat16()(x.bfloat16()).float()
    top2 = expected.topk(2, dim=1).values
    decided = top2[:, 0] - top2[:, 1] >= 1e-2 * expected.abs().max()
    assert decided.float().mean() >= 0.5
    for logits in (autocast, pure):
        agree = logits.argmax(1)[decided] == expected.argmax(1)[decided]
        assert agree.float().mean() >= 0.99
        assert (logits - expected).abs().max() <= 0.05 * expected.abs().max()


def test_gradients_match_timm():
    """One training step's loss and gradients equal timm's for the same weights and batch."""
    timm = pytest.importorskip("timm")
    from timm.models.davit import DaVit

    torch.manual_seed(0)
    ours = DaViTClassifier(MINI, num_classes=7)
    reference = DaVit(depths=tuple(MINI["depths"]), embed_dims=tuple(MINI["embed_dims"]),
                      num_heads=tuple(MINI["num_heads"]), num_classes=7)
    reference.load_state_dict(from_davit(ours.state_dict(), "timm"))
    x, y = torch.randn(3, 3, 61, 75), torch.tensor([0, 3, 6])
    for model in (ours, reference):
        F.cross_entropy(model.train()(x), y).backward()
    expected = dict(reference.named_parameters())
    for key, name in zip(ours.state_dict(), from_davit(ours.state_dict(), "timm")):
        ours_grad, timm_grad = dict(ours.named_parameters())[key].grad, expected[name].grad
        assert (ours_grad - timm_grad).abs().max() <= 1e-4 * timm_grad.abs().max() + 1e-7, key


def test_image_groups_do_not_change_results(monkeypatch):
    """CPU stages run on groups of images; grouping one image at a time gives the same logits."""
    torch.manual_seed(0)
    model = DaViTClassifier(MINI, num_classes=5).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        whole = model(x)
        monkeypatch.setattr("davit.model.backbone.CPU_GROUP_BYTES", 1)
        grouped = model(x)
    torch.testing.assert_close(grouped, whole, rtol=0, atol=1e-5)


def test_images_per_group_follows_the_byte_budget():
    assert _images_per_group(torch.empty(64, 56, 56, 96)) == 1
    assert _images_per_group(torch.empty(64, 56, 56, 96, dtype=torch.bfloat16)) == 3
    assert _images_per_group(torch.empty(3, 7, 7, 768)) == 13
    assert _images_per_group(torch.empty(1, 500, 500, 96)) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_depthwise_conv_is_input_plus_conv(dtype):
    torch.manual_seed(0)
    conv = ResidualDepthwiseConv(6, 6, kernel_size=3, padding=1, groups=6).to(dtype)
    x = torch.randn(2, 6, 9, 11, dtype=dtype).contiguous(memory_format=torch.channels_last)
    expected = x.float() + F.conv2d(x.float(), conv.weight.float(), conv.bias.float(), padding=1,
                                    groups=6)
    tolerance = 1e-6 if dtype == torch.float32 else 2e-2
    with torch.no_grad():
        assert (conv(x).float() - expected).abs().max() <= tolerance * expected.abs().max()


def test_channel_attention_is_the_official_formula():
    torch.manual_seed(0)
    attn = ChannelAttention(24, num_heads=3)
    x = torch.randn(2, 50, 24)
    q, k, v = attn.qkv(x).reshape(2, 50, 3, 3, 8).permute(2, 0, 3, 1, 4)
    weights = ((k * attn.scale).transpose(-1, -2) @ v).softmax(dim=-1)
    expected = attn.proj((weights @ q.transpose(-1, -2)).permute(0, 3, 1, 2).reshape(2, 50, 24))
    torch.testing.assert_close(attn(x), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(64, 64), (61, 75)])
def test_no_graph_breaks(size):
    model = DaViTClassifier(MINI, num_classes=5).eval()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, *size))
    assert explanation.graph_break_count == 0, explanation.break_reasons
