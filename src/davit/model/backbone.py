"""The DaViT backbone: four stages, each a patch embedding followed by dual-attention blocks."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .. import kernels
from ..errors import InvalidArgumentError
from .archs import DaViTArch, resolve_arch, resolve_semantics
from .blocks import DualAttentionBlock, PatchEmbed


class DaViTStage(nn.Module):
    """A downsampling patch embedding (or nothing, after the stem) and ``depth`` dual-attention
    blocks."""

    def __init__(self, downsample: nn.Module, dim: int, depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float, drop_paths: Sequence[float], channel_attention: str = "davit") -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*[
            DualAttentionBlock(dim, num_heads, window_size, mlp_ratio,
                               (drop_paths[2 * i], drop_paths[2 * i + 1]), channel_attention)
            for i in range(depth)
        ])
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        # Images are independent: running them in groups gives the same result (davit.kernels).
        group_size = kernels.images_per_group(x)
        if group_size is None or group_size >= x.shape[0]:
            return self._blocks(x)
        return torch.cat([self._blocks(group) for group in x.split(group_size)])

    def _blocks(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class DaViT(nn.Module):
    """DaViT backbone returning NCHW feature maps of the stages in ``out_indices``.

    Args:
        arch: an architecture name (``tiny`` ... ``giant``, ``florence2-base`` ...), a dict of
            :class:`DaViTArch` fields (``embed_dims``, ``depths``, ``num_heads`` required) or a
            :class:`DaViTArch`.
        in_chans: input channels.
        drop_path_rate: stochastic-depth rate of the last block, rising linearly from 0.
        out_indices: stages whose outputs :meth:`forward` returns (strides 4, 8, 16, 32).
        frozen_stages: -1 trains everything; 0 freezes the stem; k > 0 freezes the stem and the
            first k stages (kept in eval mode, without gradients).
        grad_checkpointing: recompute block activations in the backward pass to save memory.
        semantics: ``"official"`` (default) or ``"mmpretrain"`` stem padding.
    """

    def __init__(self, arch: str | dict | DaViTArch = "tiny", in_chans: int = 3,
                 drop_path_rate: float = 0.0, out_indices: Iterable[int] = (3,),
                 frozen_stages: int = -1, grad_checkpointing: bool = False,
                 semantics: str = "official") -> None:
        super().__init__()
        self.arch = arch = resolve_arch(arch)
        self.semantics = semantics
        same_padding = resolve_semantics(semantics).stem_same_padding
        num_stages = len(arch.embed_dims)
        self.out_indices = tuple(stage_numbers((out_indices,) if isinstance(out_indices, int) else out_indices,
                                                num_stages, "out_indices"))
        if not -1 <= frozen_stages <= num_stages:
            raise InvalidArgumentError(f"frozen_stages must be between -1 and {num_stages}, got {frozen_stages}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise InvalidArgumentError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.frozen_stages = frozen_stages
        self.embed_dims = arch.embed_dims
        self.num_features = arch.embed_dims[-1]

        embeds = [PatchEmbed(arch.embed_dims[i - 1] if i else in_chans, arch.embed_dims[i],
                             arch.patch_kernels[i], arch.patch_strides[i], arch.patch_paddings[i],
                             arch.patch_norm_first[i], arch.pad_to_stride, same_padding and i == 0)
                  for i in range(num_stages)]
        self.stem = embeds[0]
        rates = torch.linspace(0, drop_path_rate, 2 * sum(arch.depths), device="cpu").tolist()
        stages, offset = [], 0
        for i, (dim, depth, heads) in enumerate(zip(arch.embed_dims, arch.depths, arch.num_heads)):
            stages.append(DaViTStage(embeds[i] if i else nn.Identity(), dim, depth, heads, arch.window_size,
                                     arch.mlp_ratio, rates[offset:offset + 2 * depth], arch.channel_attention))
            offset += 2 * depth
        self.stages = nn.ModuleList(stages)
        self.out_norms = nn.ModuleList(
            nn.LayerNorm(dim) if arch.out_norms and i in self.out_indices else nn.Identity()
            for i, dim in enumerate(arch.embed_dims))
        self.set_grad_checkpointing(grad_checkpointing)
        self.apply(_init_weights)
        self._freeze()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            cast(DaViTStage, stage).grad_checkpointing = enable

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.stem, *self.stages[:self.frozen_stages]]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> DaViT:
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
        return self

    def forward_stages(self, x: Tensor, last: int | None = None) -> list[Tensor]:
        """Run the stem and stages 0..``last``; return every stage's (B, H, W, C) output."""
        if x.ndim != 4:
            raise InvalidArgumentError(f"expected an image batch of shape (N, C, H, W), got {tuple(x.shape)}")
        last = len(self.stages) - 1 if last is None else last
        x = self.stem(x.permute(0, 2, 3, 1))  # patch embeddings take (B, H, W, C) views
        outputs = []
        for stage in self.stages[:last + 1]:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        outputs = self.forward_stages(x, last=self.out_indices[-1])
        return tuple(self.out_norms[i](outputs[i]).permute(0, 3, 1, 2) for i in self.out_indices)


def stage_numbers(indices: Iterable[int], count: int, what: str = "indices") -> list[int]:
    """The sorted, distinct stage numbers ``indices`` names among ``count`` stages (a negative index
    counts from the end); ``what`` names the argument in the error."""
    taken = []
    for index in indices:
        if not -count <= index < count:
            raise InvalidArgumentError(f"{what} entry {index} is out of range for {count} stages")
        taken.append(index % count)
    if not taken:
        raise InvalidArgumentError(f"{what} must name at least one stage")
    return sorted(set(taken))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
