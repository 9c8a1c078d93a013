"""DaViT's layers: patch embeddings, the two attentions and the blocks built from them.

Activations travel through a stage as (B, H, W, C) tensors: LayerNorm, Linear and window
partitioning act on the last dimension directly, and the convolutions see a channels-last NCHW
view of the same memory, so no block copies data to change layout. The blocks are the paper's
pre-norm residuals, ``x + drop_path(branch(norm(x)))``; linear layers, MLPs and position encodings
go through :mod:`davit.kernels`, which computes each of them with fewer passes over memory.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import stochastic_depth

from .. import kernels


class DropPath(nn.Module):
    """Stochastic depth on residual branches (one keep/drop draw per sample)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        return stochastic_depth(x, self.p, "row", self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvPosEnc(nn.Module):
    """Convolutional position encoding: x + depthwise_conv3x3(x), on (B, H, W, C) tensors."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        return kernels.conv_plus_input(self.proj, x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Mlp(nn.Module):
    """fc2(GELU(fc1(x)))."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return kernels.mlp(self.fc1, self.act, self.fc2, x)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window: softmax(q kᵀ / √d) v."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        windows, tokens, dim = x.shape
        qkv = kernels.linear(self.qkv, x).view(windows, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # (windows, heads, tokens, head_dim) out; the projection reads it back as (windows, tokens, dim)
        x = kernels.window_attention(q, k, v)
        return kernels.linear(self.proj, x.transpose(1, 2).reshape(windows, tokens, dim))


class ChannelAttention(nn.Module):
    """Attention between the channels of each group (head), over all N tokens.

    ``"davit"``: softmax(kᵀv / √d) applied to qᵀ (d channels per group). ``"florence2"``:
    softmax(qᵀk / √N) applied to vᵀ.
    """

    def __init__(self, dim: int, num_heads: int, variant: str = "davit") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.variant = variant
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Attention over ``x`` (B, N, C)."""
        batch, tokens, dim = x.shape
        qkv = kernels.linear(self.qkv, x).view(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        # Not scaled_dot_product_attention: with the N tokens as its head dimension, the inputs
        # are strided along it and the CPU kernel falls back to its slow unfused path.
        if self.variant == "florence2":
            attn = (torch.matmul(q.transpose(-1, -2), k) * tokens ** -0.5).softmax(dim=-1)
            x = torch.matmul(v, attn.transpose(-1, -2))
        else:
            attn = (torch.matmul(k.transpose(-1, -2), v) * self.scale).softmax(dim=-1)
            x = torch.matmul(q, attn.transpose(-1, -2))
        return kernels.linear(self.proj, x.transpose(1, 2).reshape(batch, tokens, dim))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, variant={self.variant!r}"


class SpatialBlock(nn.Module):
    """Position encoding, window attention, position encoding, MLP (pre-norm residuals)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_path: float) -> None:
        super().__init__()
        self.window_size = window_size
        self.cpe1 = ConvPosEnc(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads)
        self.cpe2 = ConvPosEnc(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = self._window_attention(self.cpe1(x))
        x = self.cpe2(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _window_attention(self, x: Tensor) -> Tensor:
        """``x + attn(norm1(x))`` over non-overlapping windows, padding right/bottom if needed."""
        batch, height, width, dim = x.shape
        ws = self.window_size
        pad_b, pad_r = -height % ws, -width % ws
        windows = self.norm1(x)
        if pad_b or pad_r:
            windows = F.pad(windows, (0, 0, 0, pad_r, 0, pad_b))
        rows, cols = (height + pad_b) // ws, (width + pad_r) // ws
        windows = windows.view(batch, rows, ws, cols, ws, dim).transpose(2, 3)
        windows = self.attn(windows.reshape(-1, ws * ws, dim))
        merged = windows.view(batch, rows, cols, ws, ws, dim).transpose(2, 3)
        if pad_b or pad_r:
            merged = merged.reshape(batch, rows * ws, cols * ws, dim)[:, :height, :width]
            return x + self.drop_path(merged)
        # Adding the windows to the image-ordered input puts them back in image order.
        x = x.view(batch, rows, ws, cols, ws, dim) + self.drop_path(merged)
        return x.view(batch, height, width, dim)


class ChannelBlock(nn.Module):
    """Position encoding, channel-group attention, position encoding, MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float,
                 attention: str = "davit") -> None:
        super().__init__()
        self.cpe1 = ConvPosEnc(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ChannelAttention(dim, num_heads, attention)
        self.cpe2 = ConvPosEnc(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cpe1(x)
        batch, height, width, dim = x.shape
        tokens = self.norm1(x).view(batch, height * width, dim)  # channel attention sees all tokens
        x = x + self.drop_path(self.attn(tokens).view(batch, height, width, dim))
        x = self.cpe2(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DualAttentionBlock(nn.Module):
    """One DaViT layer: a spatial block followed by a channel block."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_path: tuple[float, float], channel_attention: str = "davit") -> None:
        super().__init__()
        self.spatial = SpatialBlock(dim, num_heads, window_size, mlp_ratio, drop_path[0])
        self.channel = ChannelBlock(dim, num_heads, mlp_ratio, drop_path[1], channel_attention)

    def forward(self, x: Tensor) -> Tensor:
        return self.channel(self.spatial(x))


class PatchEmbed(nn.Module):
    """Strided convolution to a stage's width, with a LayerNorm before or after it.

    The stem (7x7 stride 4, norm after) and DaViT's downsamples (norm, then 2x2 stride 2) are
    both patch embeddings. ``pad_to_stride`` pads the input right/bottom to a multiple of the
    stride first (the official DaViT); ``same_padding`` replaces the convolution's padding by
    "same" padding, ``(ceil(H/s)-1)*s + k - H`` split floor-half before (mmpretrain's stem).
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int, padding: int,
                 norm_first: bool, pad_to_stride: bool = True, same_padding: bool = False) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.pad_to_stride = pad_to_stride
        self.same_padding = same_padding
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=kernel, stride=stride,
                              padding=0 if same_padding else padding)
        self.norm = nn.LayerNorm(in_dim if norm_first else out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C_in) to (B, H', W', C_out)."""
        if self.norm_first:
            x = self.norm(x)
        x = x.permute(0, 3, 1, 2)
        pad = self._input_padding(*x.shape[-2:])
        if any(pad):
            x = F.pad(x, pad)
        x = kernels.patch_conv(self.conv, x)
        return x if self.norm_first else self.norm(x)

    def _input_padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) padding applied before the convolution."""
        (kernel, _), (stride, _) = self.conv.kernel_size, self.conv.stride
        if self.same_padding:
            pad_h = max((-(-height // stride) - 1) * stride + kernel - height, 0)
            pad_w = max((-(-width // stride) - 1) * stride + kernel - width, 0)
            return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2
        if self.pad_to_stride:
            return 0, -width % stride, 0, -height % stride
        return 0, 0, 0, 0
