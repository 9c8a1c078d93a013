"""The reference models of the benchmark, given this library's weights: timm's DaViT and
transformers' Florence-2 vision tower, each timed as its forward (a Florence-2 tower as its
last-stage map). timm and transformers (the ``benchmark`` extra) are imported only here, when asked for."""
from __future__ import annotations

from typing import Any, cast

from torch import Tensor, nn

from ..checkpoint.formats import from_davit
from ..errors import require
from ..model import DaViTArch, is_florence2


def timm_reference(arch: DaViTArch, num_classes: int, state_dict: dict[str, Tensor]) -> nn.Module:
    """timm's DaViT with ``state_dict`` (this library's keys) loaded; timm is an optional
    dependency, so it is imported only here."""
    require("timm", "benchmark", "timing timm's DaViT")
    from timm.models.davit import DaVit

    florence2: dict[str, Any] = {"down_kernel_size": 3, "channel_attn_v2": True,
                                 "named_blocks": True} if is_florence2(arch) else {}
    model = DaVit(depths=arch.depths, embed_dims=arch.embed_dims, num_heads=arch.num_heads,
                  window_size=arch.window_size, mlp_ratio=arch.mlp_ratio, num_classes=num_classes,
                  **florence2)
    model.load_state_dict(from_davit(state_dict, "timm"))
    return _LastStage(model) if florence2 else model


def transformers_reference(arch: DaViTArch, state_dict: dict[str, Tensor],
                           attention: str) -> nn.Module:
    """transformers' ``Florence2VisionBackbone`` (attention ``eager`` or ``sdpa``) with
    ``state_dict`` (a Florence-2 tower's, this library's keys) loaded."""
    require("transformers", "benchmark", "timing transformers' Florence-2 tower")
    from transformers.models.florence2 import modeling_florence2 as florence2

    config = florence2.Florence2VisionConfig(
        depths=arch.depths, embed_dim=arch.embed_dims, num_heads=arch.num_heads,
        num_groups=arch.num_heads, window_size=arch.window_size, mlp_ratio=arch.mlp_ratio,
        patch_size=arch.patch_kernels, patch_stride=arch.patch_strides,
        patch_padding=arch.patch_paddings, patch_prenorm=arch.patch_norm_first, drop_path_rate=0.0)
    config._attn_implementation = attention
    model = florence2.Florence2VisionBackbone(config)
    prefix = "model.vision_tower."
    model.load_state_dict({key.removeprefix(prefix): value for key, value in
                           from_davit(state_dict, "transformers").items()})
    return _LastStage(model, transformers=True)


class _LastStage(nn.Module):
    """A reference model whose forward gives the last-stage map (B, C, H/32, W/32), as ours
    does: timm's ``forward_features``, transformers' ``last_hidden_state``."""

    def __init__(self, model: nn.Module, transformers: bool = False) -> None:
        super().__init__()
        self.model = model
        self.transformers = transformers

    def forward(self, x: Tensor) -> Tensor:
        if self.transformers:
            return self.model(x).last_hidden_state
        return cast(Tensor, cast(Any, self.model).forward_features(x))
