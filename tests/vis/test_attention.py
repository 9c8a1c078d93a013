"""The window and channel attention recomputed from a block's hooked input must be the model's:
the module's own output is rebuilt from the recomputed probabilities."""
import numpy as np
import pytest
import torch
from PIL import Image

from davit.errors import ImageLoadError, InvalidArgumentError
from davit.vis.attention import (
    block_attention,
    channel_attention_probabilities,
    save_attention_pictures,
    window_attention_probabilities,
)
from davit.vis.inputs import model_input
from tests.paths import REPO
from tests.vis.conftest import tiny_model

CAT = REPO / "demo" / "cat.jpg"  # 451 x 300: the 64 crop is x 91.9..359.1, y 16.7..283.3


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C / heads)."""
    batch, tokens, dim = x.shape
    return x.view(batch, tokens, heads, dim // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


def _capture(module: torch.nn.Module, model, pixel_input) -> dict:
    """The module's inputs (with keyword arguments) and output during one forward pass."""
    seen: dict = {}

    def hook(_module, args, kwargs, output):
        seen.update(args=args, kwargs=kwargs, output=output)

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():  # the model's inference path (fast kernels included)
            model(pixel_input)
    finally:
        handle.remove()
    return seen


@torch.no_grad()
def test_window_attention_rebuilds_the_module_output_and_picks_the_pixel_window(model):
    block = model.backbone.stages[1].blocks[1].spatial
    seen = _capture(block.attn, model, model_input(model, CAT).tensor)
    windows, output = seen["args"][0], seen["output"]
    probabilities = window_attention_probabilities(block.attn, windows)
    assert torch.allclose(probabilities.sum(-1), torch.ones(()), atol=1e-5)
    qkv = torch.nn.functional.linear(windows, block.attn.qkv.weight, block.attn.qkv.bias)
    value = _heads(qkv.chunk(3, dim=-1)[2], block.attn.num_heads)
    rebuilt = torch.nn.functional.linear(_merge(probabilities @ value), block.attn.proj.weight, block.attn.proj.bias)
    assert torch.allclose(rebuilt, output, atol=1e-5)

    # stage 1 on a 64 crop: 8x8 tokens of 8 pixels, windows of 3 -> a 3x3 grid of padded windows
    result = block_attention(model, CAT, stage=1, block=1, pixel=(300, 200))
    assert result.grid == (8, 8) and result.stride == 8 and result.window_size == 3
    column, row = result.region.to_input(300, 200)
    token_row, token_column = int(row // 8), int(column // 8)
    assert result.window == (token_row // 3, token_column // 3) == (1, 2)
    assert result.query == (token_row % 3) * 3 + token_column % 3
    same = probabilities[result.window[0] * 3 + result.window[1]]  # the model's own window order
    assert torch.allclose(result.window_probabilities, same, atol=1e-6)
    assert torch.allclose(result.window_probabilities.sum(-1), torch.ones(()), atol=1e-5)
    assert result.query_map().shape == (2, 3, 3)
    assert result.window_probabilities.std() > 1e-3  # the random weights make it far from uniform


@pytest.mark.parametrize("variant", ["davit", "florence2"])
@torch.no_grad()
def test_channel_attention_rebuilds_the_module_output(variant):
    model = tiny_model(variant)
    attention = model.backbone.stages[2].blocks[0].channel.attn
    seen = _capture(attention, model, model_input(model, CAT).tensor)
    tokens, output = seen["args"][0], seen["output"]
    probabilities = channel_attention_probabilities(attention, tokens)
    assert probabilities.shape == (1, 4, 8, 8)
    assert torch.allclose(probabilities.sum(-1), torch.ones(()), atol=1e-5)
    qkv = torch.nn.functional.linear(tokens, attention.qkv.weight, attention.qkv.bias)
    query, _, value = (_heads(part, attention.num_heads) for part in qkv.chunk(3, dim=-1))
    mixed = (value if variant == "florence2" else query) @ probabilities.transpose(-1, -2)
    rebuilt = torch.nn.functional.linear(_merge(mixed), attention.proj.weight, attention.proj.bias)
    assert torch.allclose(rebuilt, output, atol=1e-5)

    result = block_attention(model, CAT, stage=2, block=0)
    assert result.channel_variant == variant
    assert torch.allclose(result.channel_probabilities, probabilities[0], atol=1e-6)


def test_pictures_open_and_show_something(model, tmp_path):
    result = block_attention(model, CAT, stage=1, block=0, pixel=(150, 60))
    window, channel, arrays = save_attention_pictures(result, tmp_path, "cat", display_size=200)
    for path in (window, channel):
        with Image.open(path) as picture:
            pixels = np.asarray(picture.convert("RGB"))
            assert picture.width > 300 and picture.height > 150
            assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100
    saved = np.load(arrays)
    assert np.allclose(saved["window_probabilities"].sum(-1), 1, atol=1e-5)
    assert saved["channel_probabilities"].shape == (2, 8, 8) and tuple(saved["pixel"]) == (150, 60)


@pytest.mark.parametrize("options, message", [
    ({"stage": 4}, r"stage 4 does not exist: this model has 4 stages, 0\.\.3"),
    ({"stage": 0, "block": 1}, r"block 1 does not exist: stage 0 has 1 block\(s\), 0\.\.0"),
    ({"pixel": (451, 10)}, r"pixel \(451, 10\) is outside the 451x300 image"),
    ({"pixel": (20, 150)}, r"outside the centre crop the model sees \(x 92\.\.358"),
])
def test_bad_requests_are_one_line_errors(model, options, message):
    with pytest.raises(InvalidArgumentError, match=message) as error:
        block_attention(model, CAT, **options)
    assert "\n" not in str(error.value)


def test_unreadable_image(model, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageLoadError, match="bad.jpg is not an image file"):
        block_attention(model, bad)
