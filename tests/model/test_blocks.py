"""DaViT's layers against their formulas, and the Florence-2 variant against transformers."""
import re

import pytest
import torch
import torch.nn.functional as F

from davit.model import ARCHS, DaViT
from davit.model.blocks import ChannelAttention, PatchEmbed
from tests.helpers import randomise_

SMALL_FLORENCE2 = {**ARCHS["florence2-base"].to_dict(), "embed_dims": [8, 16, 32, 64],
                   "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8], "window_size": 4}


def test_channel_attention_is_the_official_formula():
    torch.manual_seed(0)
    attn = ChannelAttention(24, num_heads=3)
    x = torch.randn(2, 50, 24)
    q, k, v = attn.qkv(x).reshape(2, 50, 3, 3, 8).permute(2, 0, 3, 1, 4)
    weights = ((k * attn.scale).transpose(-1, -2) @ v).softmax(dim=-1)
    expected = attn.proj((weights @ q.transpose(-1, -2)).permute(0, 3, 1, 2).reshape(2, 50, 24))
    torch.testing.assert_close(attn(x), expected, rtol=0, atol=1e-5)


def test_florence2_channel_attention_is_its_formula():
    """softmax(qᵀk / √N) over each group's channels, applied to vᵀ, written out with einsum."""
    torch.manual_seed(0)
    attn = ChannelAttention(24, num_heads=3, variant="florence2")
    x = torch.randn(2, 50, 24)
    q, k, v = attn.qkv(x).reshape(2, 50, 3, 3, 8).unbind(2)  # each (B, N, groups, d)
    weights = (torch.einsum("bngi,bngj->bgij", q, k) * 50 ** -0.5).softmax(dim=-1)
    mixed = torch.einsum("bgij,bngj->bngi", weights, v)
    expected = attn.proj(mixed.reshape(2, 50, 24))
    torch.testing.assert_close(attn(x), expected, rtol=0, atol=1e-5)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize("layout", ["official", "mmpretrain", "florence2"])
def test_stem_padding(layout):
    """The official stem pads right/bottom to a multiple of 4, then 3 on every side; mmpretrain's
    pads "same"; Florence-2's pads 3 on every side only."""
    torch.manual_seed(0)
    stem = PatchEmbed(3, 8, kernel=7, stride=4, padding=3, norm_first=False,
                      pad_to_stride=layout != "florence2", same_padding=layout == "mmpretrain")
    x = torch.randn(2, 3, 29, 34)
    if layout == "official":
        padded, conv_padding = F.pad(x, (0, 2, 0, 3)), 3
    elif layout == "mmpretrain":
        padded, conv_padding = F.pad(x, (*_same_padding(34, 7, 4), *_same_padding(29, 7, 4))), 0
    else:
        padded, conv_padding = x, 3
    expected = F.conv2d(padded, stem.conv.weight, stem.conv.bias, stride=4, padding=conv_padding)
    expected = stem.norm(expected.permute(0, 2, 3, 1))
    with torch.no_grad():
        torch.testing.assert_close(stem(x.permute(0, 2, 3, 1)), expected, rtol=0, atol=1e-5)


def test_downsample_normalises_then_convolves_even_sides():
    torch.manual_seed(0)
    down = PatchEmbed(8, 16, kernel=2, stride=2, padding=0, norm_first=True)
    x = torch.randn(2, 7, 9, 8)
    expected = F.conv2d(F.pad(down.norm(x).permute(0, 3, 1, 2), (0, 1, 0, 1)), down.conv.weight,
                        down.conv.bias, stride=2).permute(0, 2, 3, 1)
    with torch.no_grad():
        torch.testing.assert_close(down(x), expected, rtol=0, atol=1e-5)


def _florence2_reference(arch: dict) -> torch.nn.Module:
    modeling = pytest.importorskip("transformers.models.florence2.modeling_florence2")
    config = modeling.Florence2VisionConfig(
        embed_dim=arch["embed_dims"], depths=arch["depths"], num_heads=arch["num_heads"],
        num_groups=arch["num_heads"], window_size=arch["window_size"], patch_size=arch["patch_kernels"],
        patch_stride=arch["patch_strides"], patch_padding=arch["patch_paddings"],
        patch_prenorm=arch["patch_norm_first"], drop_path_rate=0.0)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = modeling.Florence2VisionBackbone(config).eval()
    return randomise_(model)


def _davit_keys(state: dict) -> dict:
    """transformers' Florence2VisionBackbone keys in this library's backbone layout."""
    renames = [(r"^convs\.0\.", "stem."), (r"^convs\.(\d+)\.", r"stages.\1.downsample."),
               (r"^blocks\.(\d+)\.(\d+)\.spatial_block\.", r"stages.\1.blocks.\2.spatial."),
               (r"^blocks\.(\d+)\.(\d+)\.channel_block\.", r"stages.\1.blocks.\2.channel."),
               (r"\.conv([12])\.", r".cpe\1.proj."), (r"\.(window|channel)_attn\.", ".attn."),
               (r"\.ffn\.", ".mlp.")]
    converted = {}
    for key, value in state.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    return converted


def test_florence2_base_matches_transformers_parameter_count():
    modeling = pytest.importorskip("transformers.models.florence2.modeling_florence2")
    with torch.device("meta"):
        reference = modeling.Florence2VisionBackbone(modeling.Florence2VisionConfig())
        ours = DaViT("florence2-base")
    assert sum(p.numel() for p in reference.parameters()) == sum(p.numel() for p in ours.parameters())


@pytest.mark.parametrize("size", [(64, 64), (61, 75)])
def test_florence2_backbone_matches_transformers(size):
    """A Florence-2 architecture record, with transformers' vision tower weights (random), gives
    transformers' last hidden state."""
    reference = _florence2_reference(SMALL_FLORENCE2)
    ours = DaViT(SMALL_FLORENCE2).eval()
    ours.load_state_dict(_davit_keys(reference.state_dict()))
    torch.manual_seed(1)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = reference(x).last_hidden_state
        (actual,) = ours(x)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()
