"""DaViT's two attentions in one block, recomputed for one image without touching the model.

A forward hook on each sub-block's first LayerNorm captures what its attention reads: the
spatial block's normalised (B, H, W, C) tokens, which the window attention splits into
``window_size`` x ``window_size`` windows after padding right and bottom with zeros, and the
channel block's, which the channel attention reads as (B, N, C). From those and the block's own
weights this module recomputes the attention probabilities exactly as
:mod:`davit.model.blocks` computes them: per head, softmax(q kᵀ / √d) inside the window that
holds the chosen pixel's token; per group (head), the channel attention of its variant
(``davit``: softmax(kᵀ v / √d), ``florence2``: softmax(qᵀ k / √N)). The semantics (``official``
or ``mmpretrain``) change only the stem's padding and the head, not these.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ..data.images import ImageSource
from ..errors import InvalidArgumentError, require
from ..model.blocks import ChannelAttention, DualAttentionBlock, WindowAttention
from .drawing import DISPLAY_SIZE, fit
from .inputs import backbone_of, model_input, resolve_stage
from .regions import InputRegion, stage_token

if TYPE_CHECKING:  # matplotlib is optional (the vis extra) and imported where a picture is drawn
    from matplotlib.figure import Figure


@torch.no_grad()
def window_attention_probabilities(attention: WindowAttention, windows: Tensor) -> Tensor:
    """The attention probabilities of ``attention`` over ``windows`` (windows, tokens, C), as
    (windows, heads, tokens, tokens): row i is where token i looks, and sums to 1."""
    count, tokens, dim = windows.shape
    heads = attention.num_heads
    qkv = F.linear(windows, attention.qkv.weight, attention.qkv.bias).view(count, tokens, 3, heads, dim // heads)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return (q @ k.transpose(-1, -2) * (dim // heads) ** -0.5).softmax(dim=-1)


@torch.no_grad()
def channel_attention_probabilities(attention: ChannelAttention, tokens: Tensor) -> Tensor:
    """The channel-attention probabilities of ``attention`` over ``tokens`` (B, N, C), as
    (B, groups, d, d) with d = C / groups: row i says which channels of the group output channel i
    mixes, and sums to 1."""
    batch, count, dim = tokens.shape
    heads = attention.num_heads
    qkv = F.linear(tokens, attention.qkv.weight, attention.qkv.bias).view(batch, count, 3, heads, dim // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    if attention.variant == "florence2":
        return (q.transpose(-1, -2) @ k * count ** -0.5).softmax(dim=-1)
    return (k.transpose(-1, -2) @ v * attention.scale).softmax(dim=-1)


@dataclass(frozen=True)
class BlockAttention:
    """Both attentions of block ``block`` of stage ``stage`` for one image.

    ``window_probabilities``: (heads, T, T), T = window_size², the window attention inside the
    window at ``window`` (row, column of the window grid); ``query`` is the row of the chosen
    pixel's token. Token t of the window is at row ``t // window_size``, column
    ``t % window_size`` of it; tokens past the image's last row or column are the zero padding
    the model attends to as well. ``channel_probabilities``: (groups, d, d).
    ``grid``: the stage's (rows, columns) of tokens; ``stride``: input pixels per token.
    """

    image: Image.Image
    region: InputRegion
    stage: int
    block: int
    pixel: tuple[float, float]
    grid: tuple[int, int]
    stride: int
    window_size: int
    window: tuple[int, int]
    query: int
    window_probabilities: Tensor
    channel_probabilities: Tensor
    channel_variant: str

    def query_map(self) -> Tensor:
        """(heads, window_size, window_size): where the pixel's token looks, laid out as the window."""
        size = self.window_size
        return self.window_probabilities[:, self.query].reshape(-1, size, size)

    def window_box(self) -> tuple[float, float, float, float]:
        """The window's (left, top, right, bottom) in the original image, padding left out."""
        (row, column), size = self.window, self.window_size * self.stride
        height, width = self.region.input_size
        left, top = self.region.to_image(column * size, row * size)
        right, bottom = self.region.to_image(min((column + 1) * size, width), min((row + 1) * size, height))
        return left, top, right, bottom


def block_attention(model: nn.Module, image: ImageSource, stage: int = -2, block: int = 0,
                    pixel: tuple[float, float] | None = None) -> BlockAttention:
    """Run ``model`` on ``image`` and recompute the window attention of the window holding
    ``pixel`` (x, y in the original image; default: the centre of the region the model sees) and
    the channel attention of block ``block`` of ``stage`` (negative: from the end; default: the
    second-to-last stage, whose windows on a 224 crop are 7x7 tokens of 16 pixels)."""
    backbone = backbone_of(model)
    stage_index, stage_module = resolve_stage(backbone, stage)
    blocks = len(stage_module.blocks)
    if not -blocks <= block < blocks:
        raise InvalidArgumentError(f"block {block} does not exist: stage {stage_index} has {blocks} block(s), "
                                   f"0..{blocks - 1}")
    chosen = cast(DualAttentionBlock, stage_module.blocks[block])
    inputs = model_input(model, image)
    region = inputs.region
    if pixel is None:
        pixel = ((region.left + region.right) / 2, (region.top + region.bottom) / 2)
    region.check_pixel(*pixel, inputs.image.size)

    captured: dict[str, Tensor] = {}
    hooks = [chosen.spatial.norm1.register_forward_hook(lambda _m, _i, out: captured.update(spatial=out)),
             chosen.channel.norm1.register_forward_hook(lambda _m, _i, out: captured.update(channel=out))]
    try:
        with torch.inference_mode():
            backbone.forward_stages(inputs.tensor, last=stage_index)
            spatial, channel = captured["spatial"][:1].float(), captured["channel"][:1].float()
            _, height, width, dim = spatial.shape
            stride = prod(backbone.arch.patch_strides[:stage_index + 1])
            token_row, token_column = stage_token(region, *pixel, (height, width), stride)
            size = chosen.spatial.window_size
            window = (token_row // size, token_column // size)
            padded = F.pad(spatial, (0, 0, 0, -width % size, 0, -height % size))
            tokens = padded[0, window[0] * size:(window[0] + 1) * size, window[1] * size:(window[1] + 1) * size]
            window_probabilities = window_attention_probabilities(
                chosen.spatial.attn, tokens.reshape(1, size * size, dim))[0]
            channel_probabilities = channel_attention_probabilities(
                chosen.channel.attn, channel.reshape(1, height * width, dim))[0]
    finally:
        for hook in hooks:
            hook.remove()
    query = (token_row % size) * size + token_column % size
    return BlockAttention(inputs.image, region, stage_index, block % blocks, pixel, (height, width), stride,
                          size, window, query, window_probabilities.cpu(), channel_probabilities.cpu(),
                          chosen.channel.attn.variant)


def save_attention_pictures(result: BlockAttention, out_dir: str | Path, name: str,
                            display_size: int = DISPLAY_SIZE) -> list[Path]:
    """Write ``<name>_window.png`` (the image with the window, then one panel per head: where the
    pixel's token looks inside its window), ``<name>_channel.png`` (one channel-attention matrix
    per group) and ``<name>.npz`` (both probability arrays) into ``out_dir``."""
    require("matplotlib", "vis", "drawing attention maps")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}_window.png", folder / f"{name}_channel.png", folder / f"{name}.npz"]
    _window_figure(result, display_size).savefig(paths[0], dpi=100)
    _channel_figure(result).savefig(paths[1], dpi=100)
    np.savez_compressed(paths[2], window_probabilities=result.window_probabilities.numpy(),
                        channel_probabilities=result.channel_probabilities.numpy(),
                        query=result.query, window=np.array(result.window), pixel=np.array(result.pixel))
    return paths


def _grid(count: int, columns: int) -> tuple[int, int]:
    columns = min(count, columns)
    return -(-count // columns), columns


def _window_figure(result: BlockAttention, display_size: int) -> Figure:
    """The overview panel and one panel per head, each the window's part of the image under the
    query token's attention (one colour cell per token, the query token outlined)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    maps = result.query_map().numpy()
    heads = maps.shape[0]
    rows, columns = _grid(heads + 1, 5)
    figure = Figure(figsize=(2.6 * columns, 2.8 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis in axes:
        axis.set_axis_off()
    left, top, right, bottom = result.window_box()
    overview = fit(result.image, display_size)
    scale = overview.width / result.image.width
    axes[0].imshow(overview)
    box_left, box_top, box_right, box_bottom = (value * scale for value in result.region.box)
    axes[0].add_patch(Rectangle((box_left, box_top), box_right - box_left, box_bottom - box_top,
                                fill=False, edgecolor="white", linestyle="--", linewidth=1))
    axes[0].add_patch(Rectangle((left * scale, top * scale), (right - left) * scale, (bottom - top) * scale,
                                fill=False, edgecolor="yellow", linewidth=2))
    axes[0].plot(result.pixel[0] * scale, result.pixel[1] * scale, "r+", markersize=12, markeredgewidth=2)
    axes[0].set_title(f"stage {result.stage} block {result.block}: window {result.window}", fontsize=9)

    crop = result.image.crop((round(left), round(top), round(right), round(bottom)))
    size = result.window_size
    row, column = result.window
    valid_rows = min(size, result.grid[0] - row * size)  # the rest of the window is padding
    valid_columns = min(size, result.grid[1] - column * size)
    query_row, query_column = divmod(result.query, size)
    for head in range(heads):
        axis = axes[head + 1]
        axis.imshow(crop, extent=(0, valid_columns, valid_rows, 0))
        axis.imshow(maps[head, :valid_rows, :valid_columns], cmap="jet", alpha=0.55, interpolation="nearest",
                    extent=(0, valid_columns, valid_rows, 0), vmin=0.0)
        axis.add_patch(Rectangle((query_column, query_row), 1, 1, fill=False, edgecolor="white", linewidth=2))
        axis.set_title(f"head {head} (max {maps[head].max():.2f})", fontsize=9)
    return figure


def _channel_figure(result: BlockAttention) -> Figure:
    """One d x d matrix per group: row i, column j is how much output channel i takes from channel j."""
    from matplotlib.figure import Figure

    matrices = result.channel_probabilities.numpy()
    groups, channels = matrices.shape[0], matrices.shape[1]
    rows, columns = _grid(groups, 6)
    figure = Figure(figsize=(2.2 * columns, 2.3 * rows + 0.4), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis in axes:
        axis.set_axis_off()
    for group in range(groups):
        image = axes[group].imshow(matrices[group], cmap="viridis", vmin=0.0, interpolation="nearest")
        axes[group].set_title(f"group {group}", fontsize=9)
    figure.colorbar(image, ax=list(axes[:groups]), shrink=0.8)
    figure.suptitle(f"channel attention ({result.channel_variant}), stage {result.stage} block {result.block}\n"
                    f"{groups} group(s) of {channels} channels", fontsize=10)
    return figure
