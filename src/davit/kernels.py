"""CPU kernels that compute DaViT's layers with fewer passes over memory.

The model (:mod:`davit.model`) states the maths and calls the few functions here for its linear
layers, MLPs, residual position encodings and stage batches. Each gives the result of the plain
layer calls; how, depends on where it runs (benchmarks/LOG.md):

* CPU inference in eager mode: linear layers run as oneDNN kernels with weights packed once into
  oneDNN's blocked layout, applying GELU while the product is in cache on AVX-512 CPUs
  (:data:`GELU_POST_OP`),
  and stages run on groups of images small enough to stay in cache (:func:`images_per_group`).
* CPU training: linear products and their input gradients go through oneDNN, and the MLP
  recomputes its GELU in the backward pass instead of keeping its output.
* CPU inference in eager mode, also: attention inside small windows as two batched products and
  a softmax on CPUs without AMX (:data:`BATCHED_WINDOW_PRODUCTS`),
  and convolutions whose kernel is their stride (the 2x2 downsamples) as one packed
  linear over the gathered patches.
* float32/float64 anywhere: a depthwise convolution plus its input is one convolution with 1 added
  to the kernels' centre taps.

:func:`fast_kernels` turns all of this off (the plain reference computation: nn.Linear, GELU,
whole batches), as does ``torch.backends.mkldnn.enabled = False`` for the oneDNN parts. Layers
with forward hooks (or any global hook) run as plain module calls, so hooks see them; graphs
traced by torch.compile get the plain linear layers (inductor picks its own kernels) in image groups,
exported graphs the plain layers and whole batches.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from types import TracebackType

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

_enabled = True


class fast_kernels:  # lower case: used like a function, as torch.set_grad_enabled is
    """Turn the fast kernels on or off now; as a context manager, restore the previous setting on
    exit (like ``torch.set_grad_enabled``).

    Off, the model runs the plain reference computation (nn.Linear, GELU, whole batches): for
    checking the kernels, or timing them. On is the default and gives the same results.
    """

    def __init__(self, enabled: bool) -> None:
        global _enabled
        self._previous = _enabled
        _enabled = bool(enabled)

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        global _enabled
        _enabled = self._previous


def fast_kernels_enabled() -> bool:
    """Whether the fast kernels are on (see :class:`fast_kernels`)."""
    return _enabled


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)``."""
    if _use_onednn(x, layer):
        return _onednn_linear(x, layer)
    if (_enabled and torch.is_grad_enabled() and x.device.type == "cpu" and layer.bias is not None
            and not _has_hooks(layer)):
        return _TrainingLinear.apply(x, layer.weight, layer.bias)
    return layer(x)


def mlp(fc1: nn.Linear, act: nn.GELU, fc2: nn.Linear, x: Tensor) -> Tensor:
    """``fc2(act(fc1(x)))`` (``act`` is an exact GELU)."""
    if _use_onednn(x, fc1, fc2) and not _has_hooks(act):
        if GELU_POST_OP:
            return _onednn_linear(_onednn_linear(x, fc1, "gelu"), fc2)
        return _onednn_linear(torch.ops.aten.gelu_(_onednn_linear(x, fc1)), fc2)
    if _enabled and torch.is_grad_enabled() and not _has_hooks(fc1, act, fc2):
        return _MlpWithGeluRecompute.apply(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    return fc2(act(fc1(x)))


def conv_plus_input(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``x + conv(x)`` for a same-size depthwise ``conv``.

    In single or double precision it runs as one convolution whose kernels have 1 added to their
    centre tap, which saves a pass over the activations and the memory of the sum. In bfloat16 or
    half precision (or under autocast) ``1 + w`` would lose most of ``w``'s bits, so the input is
    added after the convolution.
    """
    if (_enabled and x.dtype in (torch.float32, torch.float64) and not _autocast_enabled(x.device)
            and not _has_hooks(conv)):
        return conv._conv_forward(x, _centred_kernels(conv), conv.bias)
    return x + conv(x)


_CENTRED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _centred_kernels(conv: nn.Conv2d) -> Tensor:
    """``conv``'s kernels with 1 added to their centre taps.

    In inference in eager mode they are made once per weight version and cached, as the packed
    linear weights are (three fewer operator calls per position encoding, which count at batch 1);
    with autograd on they are computed in the graph, so the weight gets its gradient.
    """
    weight = conv.weight
    cached = not (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.is_grad_enabled()
                  or weight.is_inference())
    if cached:
        key = (weight._version, weight.data_ptr(), weight.dtype, weight.device)
        entry = _CENTRED.get(weight)
        if entry is not None and entry[0] == key:
            return entry[1]
    kh, kw = conv.kernel_size
    centred = weight + F.pad(weight.new_ones(1, 1, 1, 1), (kw // 2, kw // 2, kh // 2, kh // 2))
    if cached:
        _CENTRED[weight] = (key, centred)
    return centred


def window_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q kᵀ / √d) v`` over (windows, heads, tokens, head_dim) tensors.

    For CPU inference on small windows (up to 12x12 tokens) on CPUs without AMX
    (:data:`BATCHED_WINDOW_PRODUCTS`), batched products and a softmax over groups of windows whose
    scores fit in :data:`SCORES_BYTES` beat the fused attention kernel, whose blocking is made for
    long sequences (benchmarks/LOG.md: 0.65-0.90x its time on DaViT-tiny and Florence-2 windows, fp32
    and bf16, on an AVX-512 EPYC). Elsewhere (AMX CPUs, training, CUDA, compiled or exported graphs,
    long windows) it is ``F.scaled_dot_product_attention``.
    """
    windows, heads, tokens, head_dim = q.shape
    if not (_enabled and BATCHED_WINDOW_PRODUCTS and q.device.type == "cpu" and not torch.is_grad_enabled()
            and tokens <= SMALL_WINDOW and not torch.compiler.is_compiling() and not torch.compiler.is_exporting()):
        return F.scaled_dot_product_attention(q, k, v)
    scale = head_dim ** -0.5
    per_group = max(1, SCORES_BYTES // (heads * tokens * tokens * q.element_size()))
    if per_group >= windows:
        return torch.matmul(torch.matmul(q, k.transpose(-2, -1)).mul_(scale).softmax(dim=-1), v)
    out = q.new_empty(windows, heads, tokens, head_dim)
    for start in range(0, windows, per_group):
        part = slice(start, start + per_group)
        scores = torch.matmul(q[part], k[part].transpose(-2, -1)).mul_(scale)
        torch.matmul(scores.softmax(dim=-1), v[part], out=out[part])
    return out


SCORES_BYTES = 1 << 20  # attention scores computed at once: small enough to stay in cache
SMALL_WINDOW = 144  # tokens: up to 12x12 windows take the batched products on CPU


def _has_amx() -> bool:
    """Whether this CPU has AMX tiles (PyTorch's private probe; False where the build lacks it)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False


# On AMX CPUs the fused attention kernel runs its products on AMX tiles and beats the batched
# products on small windows (2-core AMX Xeon, 2 threads: 0.83x their time on DaViT-tiny's 49-token
# windows and 0.45-0.55x on Florence-2's 144 in bf16, 0.8-0.9x in fp32; DaViT-tiny eager bf16
# 1.04x at batch 1 and 16; benchmarks/LOG.md). Without AMX the batched products win.
BATCHED_WINDOW_PRODUCTS = not _has_amx()


def patch_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` for a (B, C, H, W) view of (B, H, W, C) memory, returned as (B, H', W', C_out).

    A convolution whose kernel equals its stride and has no padding (DaViT's 2x2 stride-2
    downsamples) sees each input pixel once: it is a linear layer over non-overlapping patches. For
    CPU inference it runs as one: the patches are gathered into rows (one pass over the input) and
    multiplied with the packed weight, which avoids oneDNN's convolution and the copy of its weight
    into the input's layout at every call.
    """
    if (conv.kernel_size == conv.stride and conv.padding == (0, 0) and conv.dilation == (1, 1)
            and conv.groups == 1 and _use_onednn(x, conv)):
        batch, channels, height, width = x.shape
        kh, kw = conv.kernel_size
        rows = x.permute(0, 2, 3, 1).reshape(batch, height // kh, kh, width // kw, kw, channels)
        rows = rows.transpose(2, 3).reshape(batch, height // kh, width // kw, kh * kw * channels)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        weight, bias = _packed(conv, dtype, lambda w: w.permute(0, 2, 3, 1).reshape(w.shape[0], -1))
        return torch.ops.mkldnn._linear_pointwise(rows.to(dtype), weight, bias, "none", [], "none")
    return conv(x).permute(0, 2, 3, 1)


CPU_GROUP_BYTES = 2 << 20


def images_per_group(x: Tensor) -> int | None:
    """How many images of a (B, H, W, C) batch a stage runs at once; None for the whole batch.

    For CPU inference, groups of about :data:`CPU_GROUP_BYTES` of activations keep every
    intermediate tensor in cache and small enough for the allocator to reuse freed memory instead
    of mapping fresh pages; images are independent, so the result does not depend on the grouping.
    Graphs compiled by torch.compile run in groups too (inductor then fuses within each group; the
    loop is unrolled for the traced batch size): without them the compiled model ran at 0.72x the
    eager one in fp32, with them 0.87x, and 1.06x in bf16 with inductor's freezing (benchmarks/LOG.md).
    Training (which keeps every activation for the backward pass anyway), other devices and
    exported graphs (whose batch size is dynamic) take the whole batch.
    """
    if (not _enabled or x.device.type != "cpu" or torch.is_grad_enabled() or torch.compiler.is_exporting()):
        return None
    image_bytes = max(math.prod(x.shape[1:]) * x.element_size(), 1)
    return max(CPU_GROUP_BYTES // image_bytes, 1)


def _autocast_enabled(device: torch.device) -> bool:
    return device.type != "meta" and torch.is_autocast_enabled(device.type)


def _has_hooks(*modules: nn.Module) -> bool:
    """Whether forward hooks (global or on ``modules``) must see these modules being called."""
    return bool(nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks
                or any(module._forward_hooks or module._forward_pre_hooks for module in modules))


def _use_onednn(x: Tensor, *layers: nn.Linear | nn.Conv2d) -> bool:
    """Whether ``layers`` may run as oneDNN's linear kernels, fused with the GELU.

    For CPU inference in eager mode (no autograd, not traced by torch.compile or export), in
    float32 or bfloat16 (autocast included), on layers without hooks: anything that observes the
    model sees the same module calls as in the plain code. oneDNN's kernels are faster than the
    BLAS products for the short matrices of DaViT's later stages and small batches.
    """
    if (not _enabled or torch.compiler.is_compiling() or x.device.type != "cpu" or torch.is_grad_enabled()
            or not torch.backends.mkldnn.enabled or _has_hooks(*layers)):
        return False
    dtypes = _onednn_dtypes()
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    return dtype in dtypes and all(layer.weight.dtype in dtypes for layer in layers)


def probe_onednn_linear(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this PyTorch build has oneDNN's packed, fused linear kernels in ``dtype`` on this CPU
    and they agree with ``gelu(F.linear(...))`` on a small example (some builds lack them; bfloat16
    needs AVX512-BF16, AVX-NE-CONVERT or AMX, and oneDNN refuses it elsewhere)."""
    if not (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    x = torch.linspace(-2, 2, 24).view(4, 6).to(dtype)
    weight, bias = torch.linspace(-0.5, 0.5, 18).view(3, 6).to(dtype), torch.tensor([0.1, -0.2, 0.3]).to(dtype)
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        out = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu", [], "none")
    except RuntimeError:
        return False
    expected = F.gelu(F.linear(x.float(), weight.float(), bias.float()))
    return torch.allclose(out.float(), expected, atol=1e-5 if dtype == torch.float32 else 2e-2)


# oneDNN applies GELU as a post-op of fc1 fast with AVX-512 (measured on AMX Xeons); on AVX2 its
# post-op made each fc1 0.6-0.9 ms slower, while a separate in-place GELU costs 0.1-0.3 ms
# (DaViT-tiny on a 2-core EPYC: 1.05x at batch 1, 1.14x at batch 16; benchmarks/LOG.md)
GELU_POST_OP = torch.backends.cpu.get_cpu_capability().startswith("AVX512")

@functools.cache
def _onednn_dtypes() -> frozenset[torch.dtype]:
    """The dtypes oneDNN's linear kernels compute here (bfloat16 only on CPUs that have it natively).

    Probed at the first use, not at import: the probe runs oneDNN, whose OpenMP team belongs to the
    calling thread, and a server that imports this library in one thread and runs the model in
    another ran every forward pass 2x slower on a 2-core AMX Xeon when the importing thread had
    made a team first (benchmarks/LOG.md).
    """
    with torch.autocast("cpu", enabled=False):  # the first use may come under autocast
        return frozenset(dtype for dtype in (torch.float32, torch.bfloat16) if probe_onednn_linear(dtype))


def has_onednn_linear(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the oneDNN linear kernels in ``dtype`` pass :func:`probe_onednn_linear` (probed once)."""
    return dtype in _onednn_dtypes()


def _onednn_linear(x: Tensor, layer: nn.Linear, activation: str = "none") -> Tensor:
    """``activation(layer(x))`` as one oneDNN kernel, in autocast's dtype."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    weight, bias = packed_parameters(layer, dtype)
    return torch.ops.mkldnn._linear_pointwise(x.to(dtype), weight, bias, activation, [], "none")


_PACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def packed_parameters(layer: nn.Linear, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """The layer's weight in ``dtype`` reordered into oneDNN's blocked layout, and its bias in
    ``dtype``; made once and cached.

    The cache holds one packed copy per weight tensor (as much memory again as the linear
    weights) and is dropped with the weight. It is refreshed when the weight's or bias's version
    counter or storage changes, which every in-place update through PyTorch does (optimizer and
    EMA steps, ``load_state_dict``, ``.to()``); writes through ``.data`` bypass the version counter
    and are not seen (PyTorch discourages them). Inference tensors have no version counter and
    are not cached.
    """
    return _packed(layer, dtype, lambda weight: weight)


def _packed(layer: nn.Linear | nn.Conv2d, dtype: torch.dtype,
            as_matrix: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor | None]:
    """:func:`packed_parameters` of the (out, in) matrix ``as_matrix`` makes of ``layer.weight``."""
    weight, bias = layer.weight, layer.bias
    if weight.is_inference() or (bias is not None and bias.is_inference()):
        return as_matrix(weight).to(dtype), None if bias is None else bias.to(dtype)
    key = (dtype, weight._version, weight.data_ptr(),
           None if bias is None else (bias._version, bias.data_ptr()))
    entry = _PACKED.get(weight)
    if entry is None or entry[0] != key:
        matrix = as_matrix(weight.detach()).to(dtype).contiguous()
        packed = torch.ops.mkldnn._reorder_linear_weight(matrix, None)
        entry = (key, packed, None if bias is None else bias.detach().to(dtype))
        _PACKED[weight] = entry
    return entry[1], entry[2]


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
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
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
    matrices of the first stages (benchmarks/LOG.md); the weight gradient stays a BLAS product.
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
    if (not torch.compiler.is_compiling() and x.device.type == "cpu" and torch.backends.mkldnn.enabled
            and x.dtype in _onednn_dtypes() and weight.dtype in _onednn_dtypes()):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "none")
    return F.linear(x, weight, bias)
