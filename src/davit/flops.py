"""Parameter and multiply-add counts, counted the way mmpretrain's model zoo counts them.

mmpretrain's table (``get_flops``) analyses the feature extractor (backbone and pooling, not the
final linear layer) and counts multiply-adds of convolutions, linear layers and attention
products, 5 operations per LayerNorm element and 1 per pooled element. The counts come from
forward hooks on a copy of the model on the ``meta`` device, so no memory or time is spent.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .model.base import DaViTModel
from .model.blocks import ChannelAttention, WindowAttention
from .model.classifier import ClassifierHead

LAYER_NORM_OPS = 5


def _conv_macs(module: nn.Conv2d, out: Tensor) -> int:
    kh, kw = module.kernel_size
    return out.numel() * (module.in_channels // module.groups) * kh * kw


def count_flops(model: DaViTModel, input_size: tuple[int, int] = (224, 224)) -> dict:
    """``params`` (all parameters), ``flops`` (feature extractor, seed-table convention) and
    ``head_flops`` (the final linear layer, 0 without one) for one image of ``input_size`` (H, W).
    A Florence-2 encoder's feature extractor is its tower; its projector counts in ``params``."""
    height, width = input_size
    if height < 1 or width < 1:
        raise ValueError(f"input size must be positive, got {input_size}")
    params = sum(p.numel() for p in model.parameters())
    on_meta = all(p.is_meta for p in model.parameters())
    meta_model = (model if on_meta else copy.deepcopy(model).to("meta")).eval()
    totals = {"flops": 0, "head_flops": 0}
    head_fc = meta_model.head.fc if meta_model.head is not None else None

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            totals["flops"] += _conv_macs(module, out)
        elif isinstance(module, nn.Linear):
            key = "head_flops" if module is head_fc else "flops"
            totals[key] += x.numel() // module.in_features * module.in_features * module.out_features
        elif isinstance(module, WindowAttention):
            windows, tokens, dim = x.shape
            totals["flops"] += 2 * windows * tokens * tokens * dim
        elif isinstance(module, ChannelAttention):
            batch, tokens, dim = x.shape
            totals["flops"] += 2 * batch * tokens * dim * (dim // module.num_heads)
        elif isinstance(module, nn.LayerNorm):
            totals["flops"] += LAYER_NORM_OPS * x.numel()
        elif isinstance(module, ClassifierHead):
            totals["flops"] += x.numel()  # global average pooling

    handles = [m.register_forward_hook(hook) for m in meta_model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear, WindowAttention, ChannelAttention,
                                 nn.LayerNorm, ClassifierHead))]
    try:
        with torch.no_grad():
            meta_model(torch.empty(1, meta_model.backbone.stem.conv.in_channels, height, width,
                                   device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return {"params": params, "flops": totals["flops"], "head_flops": totals["head_flops"],
            "input_size": [height, width]}
