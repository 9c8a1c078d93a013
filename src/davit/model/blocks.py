"""DaViT building blocks.

Activations travel through a stage as (B, H, W, C) tensors: LayerNorm, Linear and window
partitioning act on the last dimension directly, and the depthwise position-encoding convolutions
see a channels-last NCHW view of the same memory, so no block copies data to change layout.

The forward passes compute the official model with fewer passes over memory (see
docs/performance.md): in float32 the position encodings fold their residual into the convolution,
window attention outputs go back to image order inside the residual addition, and in CPU
inference the linear layers run as oneDNN kernels with packed weights that apply the GELU and
the residual additions before writing their output. In training the MLP recomputes GELU in
the backward pass instead of keeping its output, and CPU products go through oneDNN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary
from torchvision.ops import stochastic_depth


class DropPath(nn.Module):
    """Stochastic depth on residual branches (one keep/drop draw per sample)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    @property
    def active(self) -> bool:
        """Whether this drops anything (training with p > 0); otherwise it is the identity."""
        return self.p > 0.0 and self.training

    def forward(self, x: Tensor) -> Tensor:
        if not self.active:
            return x
        return stochastic_depth(x, self.p, "row", self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ResidualDepthwiseConv(nn.Conv2d):
    """A depthwise convolution plus its input: ``x + conv(x)``.

    In single or double precision it runs as one convolution whose kernels have 1 added to their
    centre tap, which saves a pass over the activations and the memory of the sum. In bfloat16 or
    half precision (or under autocast) ``1 + w`` would lose most of ``w``'s bits, so the input is
    added after the convolution.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float32, torch.float64) and not _autocast_enabled(x.device):
            kh, kw = self.kernel_size
            centre = F.pad(self.weight.new_ones(1, 1, 1, 1), (kw // 2, kw // 2, kh // 2, kh // 2))
            return self._conv_forward(x, self.weight + centre, self.bias)
        return x + self._conv_forward(x, self.weight, self.bias)


def _autocast_enabled(device: torch.device) -> bool:
    return device.type != "meta" and torch.is_autocast_enabled(device.type)


class ConvPosEnc(nn.Module):
    """Depthwise 3x3 convolution added to its input: x + conv(x), on (B, H, W, C) tensors."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = ResidualDepthwiseConv(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """``fc2(gelu(fc1(x)))``, plus ``residual`` when given."""
        if _use_onednn(x, self.fc1, self.fc2):
            return _onednn_linear(_onednn_linear(x, self.fc1, "gelu"), self.fc2, residual=residual)
        if torch.is_grad_enabled() and not _has_hooks(self.fc1, self.fc2):
            out = _MlpWithGeluRecompute.apply(x, self.fc1.weight, self.fc1.bias,
                                              self.fc2.weight, self.fc2.bias)
        else:
            out = self.fc2(self.act(self.fc1(x)))
        return out if residual is None else residual + out


class _MlpWithGeluRecompute(torch.autograd.Function):
    """``fc2(gelu(fc1(x)))`` that keeps only ``x`` and ``fc1(x)`` for the backward pass.

    Autograd would also keep ``gelu(fc1(x))``, the input of ``fc2``: as large as ``fc1(x)``, and
    the largest activation of the block. The backward pass recomputes it from ``fc1(x)`` instead
    (one elementwise pass). Under autocast the products run in autocast's dtype, as they would in
    nn.Linear, and the saved tensors are the cast ones.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight1: Tensor, bias1: Tensor, weight2: Tensor,
                bias2: Tensor) -> Tensor:
        x, weight1, bias1, weight2, bias2 = _autocast_inputs(x, weight1, bias1, weight2, bias2)
        with torch.autocast(x.device.type, enabled=False):
            hidden = _product(x, weight1, bias1)
            out = _product(F.gelu(hidden), weight2, bias2)
        ctx.save_for_backward(x, weight1, hidden, weight2)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, ...]:
        x, weight1, hidden, weight2 = ctx.saved_tensors
        grad_out = grad_out.to(hidden.dtype).reshape(-1, grad_out.shape[-1])
        hidden_2d = hidden.reshape(-1, hidden.shape[-1])
        needs_x, needs_w1, needs_b1, needs_w2, needs_b2 = ctx.needs_input_grad
        grad_weight2 = grad_out.t().mm(F.gelu(hidden_2d)) if needs_w2 else None
        grad_hidden = torch.ops.aten.gelu_backward(grad_out.mm(weight2), hidden_2d)
        grad_weight1 = grad_hidden.t().mm(x.reshape(-1, x.shape[-1])) if needs_w1 else None
        grad_x = _product(grad_hidden, weight1.t().contiguous()).view(x.shape) if needs_x else None
        return (grad_x, grad_weight1, grad_hidden.sum(0) if needs_b1 else None, grad_weight2,
                grad_out.sum(0) if needs_b2 else None)


class _TrainingLinear(torch.autograd.Function):
    """``F.linear`` whose products (forward, and the input gradient) go through :func:`_product`.

    Used in training on CPU, where oneDNN's kernels beat the BLAS products on the long, narrow
    matrices of the first stages (docs/performance.md); the weight gradient stays a BLAS product.
    Under autocast the products run in autocast's dtype, as they would in nn.Linear.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        x, weight, bias = _autocast_inputs(x, weight, bias)
        with torch.autocast(x.device.type, enabled=False):
            out = _product(x, weight, bias)
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_out = grad_out.to(x.dtype).reshape(-1, grad_out.shape[-1])
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        grad_weight = grad_out.t().mm(x.reshape(-1, x.shape[-1])) if needs_weight else None
        grad_x = _product(grad_out, weight.t().contiguous()).view(x.shape) if needs_x else None
        return grad_x, grad_weight, grad_out.sum(0) if needs_bias else None


def _autocast_inputs(*tensors: Tensor) -> tuple[Tensor, ...]:
    """``tensors`` in the dtype autocast would compute their product in (unchanged without it)."""
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) for t in tensors)


def _product(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, as a oneDNN kernel on CPU where one is available."""
    if (x.device.type == "cpu" and _HAS_ONEDNN_LINEAR and torch.backends.mkldnn.enabled
            and not torch.compiler.is_compiling() and x.dtype in (torch.float32, torch.bfloat16)):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "none")
    return F.linear(x, weight, bias)


def linear(layer: nn.Linear, x: Tensor, residual: Tensor | None = None) -> Tensor:
    """``layer(x)`` (plus ``residual``): through oneDNN with packed weights where
    :func:`_use_onednn` allows, as :class:`_TrainingLinear` in CPU training."""
    if _use_onednn(x, layer):
        return _onednn_linear(x, layer, residual=residual)
    if (torch.is_grad_enabled() and x.device.type == "cpu" and layer.bias is not None
            and not _has_hooks(layer)):
        out = _TrainingLinear.apply(x, layer.weight, layer.bias)
    else:
        out = layer(x)
    return out if residual is None else residual + out


def _use_onednn(x: Tensor, *layers: nn.Linear) -> bool:
    """Whether ``layers`` may run as oneDNN's linear kernels, fused with the GELU and residual.

    For CPU inference in eager mode (no autograd, not traced by torch.compile or export), in
    float32 or bfloat16 (autocast included), on layers without hooks: anything that observes the
    model sees the same module calls as in the plain code. ``torch.backends.mkldnn.enabled =
    False`` turns the path off. oneDNN's kernels are faster than the
    BLAS products for the short matrices of DaViT's later stages and small batches, and apply GELU
    and the residual addition while the product is still in cache (docs/performance.md).
    """
    if (x.device.type != "cpu" or torch.is_grad_enabled() or not _HAS_ONEDNN_LINEAR
            or not torch.backends.mkldnn.enabled or torch.compiler.is_compiling()
            or _has_hooks(*layers)):
        return False
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    return dtype in (torch.float32, torch.bfloat16) and all(
        layer.weight.dtype in (torch.float32, torch.bfloat16) for layer in layers)


def _has_hooks(*layers: nn.Module) -> bool:
    """Whether forward hooks (global or on ``layers``) must see these layers being called."""
    return bool(nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks
                or any(layer._forward_hooks or layer._forward_pre_hooks for layer in layers))


def _probe_onednn_linear() -> bool:
    """Whether this PyTorch build has oneDNN's packed, fused linear kernels and they agree with
    ``gelu(F.linear(...))`` on a small example (some builds or CPUs lack them)."""
    if not (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    x = torch.linspace(-2, 2, 24).view(4, 6)
    weight, bias = torch.linspace(-0.5, 0.5, 18).view(3, 6), torch.tensor([0.1, -0.2, 0.3])
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        out = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu", [], "none")
    except RuntimeError:
        return False
    return torch.allclose(out, F.gelu(F.linear(x, weight, bias)), atol=1e-5)


_HAS_ONEDNN_LINEAR = _probe_onednn_linear()


def _onednn_linear(x: Tensor, layer: nn.Linear, activation: str = "none",
                   residual: Tensor | None = None) -> Tensor:
    """``activation(layer(x))`` (plus ``residual``) as one oneDNN kernel, in autocast's dtype."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    weight, bias = _packed_parameters(layer, dtype)
    x = x.to(dtype)
    if residual is not None and residual.dtype == dtype and activation == "none":
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")
    out = torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "none")
    return out if residual is None else residual + out


_PACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _packed_parameters(layer: nn.Linear, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """The layer's weight in ``dtype`` reordered into oneDNN's blocked layout, and its bias in
    ``dtype``; made once and cached.

    The cache holds one packed copy per weight tensor (as much memory again as the linear
    weights) and is dropped with the weight. It is refreshed when the weight's or bias's version
    counter or storage changes, which every in-place update through PyTorch does (optimizer and
    EMA steps, ``load_state_dict``, ``.to()``); writes through ``.data`` bypass the version counter
    and are not seen (PyTorch discourages them). Inference tensors have no version counter and
    are not cached.
    """
    weight, bias = layer.weight, layer.bias
    if weight.is_inference() or (bias is not None and bias.is_inference()):
        return weight.to(dtype), None if bias is None else bias.to(dtype)
    key = (dtype, weight._version, weight.data_ptr(),
           None if bias is None else (bias._version, bias.data_ptr()))
    entry = _PACKED.get(weight)
    if entry is None or entry[0] != key:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype), None)
        entry = (key, packed, None if bias is None else bias.detach().to(dtype))
        _PACKED[weight] = entry
    return entry[1], entry[2]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window: softmax(q k^T / sqrt(d)) v."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        windows, tokens, dim = x.shape
        qkv = linear(self.qkv, x).view(windows, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # The CPU and CUDA kernels return (windows, tokens, heads, head_dim) memory: no copy here.
        x = F.scaled_dot_product_attention(q, k, v)
        return linear(self.proj, x.transpose(1, 2).reshape(windows, tokens, dim))


class ChannelAttention(nn.Module):
    """Attention between channel groups: softmax(k^T v / sqrt(d)) applied to q^T."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """Attention over ``x`` (B, N, C), plus ``residual`` when given."""
        batch, tokens, dim = x.shape
        qkv = linear(self.qkv, x).view(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        # Not scaled_dot_product_attention: with the N tokens as its head dimension, the inputs
        # are strided along it and the CPU kernel falls back to its slow unfused path.
        attn = (torch.matmul(k.transpose(-1, -2), v) * self.scale).softmax(dim=-1)
        x = torch.matmul(q, attn.transpose(-1, -2))
        return linear(self.proj, x.transpose(1, 2).reshape(batch, tokens, dim), residual)


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
        if self.drop_path.active:
            return x + self.drop_path(self.mlp(self.norm2(x)))
        return self.mlp(self.norm2(x), residual=x)

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

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.cpe1 = ConvPosEnc(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ChannelAttention(dim, num_heads)
        self.cpe2 = ConvPosEnc(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cpe1(x)
        batch, height, width, dim = x.shape
        tokens = self.norm1(x).view(batch, height * width, dim)
        if self.drop_path.active:
            x = x + self.drop_path(self.attn(tokens).view(batch, height, width, dim))
        else:
            x = self.attn(tokens, residual=x.reshape(batch, height * width, dim))
            x = x.view(batch, height, width, dim)
        x = self.cpe2(x)
        if self.drop_path.active:
            return x + self.drop_path(self.mlp(self.norm2(x)))
        return self.mlp(self.norm2(x), residual=x)


class DualAttentionBlock(nn.Module):
    """One DaViT layer: a spatial block followed by a channel block."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_path: tuple[float, float]) -> None:
        super().__init__()
        self.spatial = SpatialBlock(dim, num_heads, window_size, mlp_ratio, drop_path[0])
        self.channel = ChannelBlock(dim, num_heads, mlp_ratio, drop_path[1])

    def forward(self, x: Tensor) -> Tensor:
        return self.channel(self.spatial(x))


class Stem(nn.Module):
    """7x7 stride-4 convolution and LayerNorm.

    ``padding="official"`` pads the input right/bottom to a multiple of 4 and then 3 pixels on every
    side (the official DaViT); ``padding="mmpretrain"`` pads "same" as mmpretrain's port does
    (total ``(ceil(H/4)-1)*4 + 7 - H`` split floor-half before, the rest after).
    """

    def __init__(self, in_chans: int, dim: int, padding: str = "official") -> None:
        super().__init__()
        if padding not in ("official", "mmpretrain"):
            raise ValueError(f"stem padding must be 'official' or 'mmpretrain', got {padding!r}")
        self.padding = padding
        self.conv = nn.Conv2d(in_chans, dim, kernel_size=7, stride=4,
                              padding=3 if padding == "official" else 0)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if self.padding == "official":
            pad = (0, -width % 4, 0, -height % 4)
        else:
            pad_h = max((-(-height // 4) - 1) * 4 + 7 - height, 0)
            pad_w = max((-(-width // 4) - 1) * 4 + 7 - width, 0)
            pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        if any(pad):
            x = F.pad(x, pad)
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class Downsample(nn.Module):
    """LayerNorm, then 2x2 stride-2 convolution after padding right/bottom to even sides."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x).permute(0, 3, 1, 2)
        height, width = x.shape[-2:]
        if height % 2 or width % 2:
            x = F.pad(x, (0, width % 2, 0, height % 2))
        return self.conv(x).permute(0, 2, 3, 1)
