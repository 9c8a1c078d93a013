"""The DaViT backbone: stem, then four stages of dual-attention blocks."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .archs import DaViTArch, resolve_arch
from .blocks import Downsample, DualAttentionBlock, Stem

SEMANTICS = ("official", "mmpretrain")


def check_semantics(semantics: str) -> str:
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")
    return semantics


class DaViTStage(nn.Module):
    """An optional downsampling layer followed by ``depth`` dual-attention blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float, drop_paths: Sequence[float], downsample: bool) -> None:
        super().__init__()
        self.downsample = Downsample(in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            DualAttentionBlock(dim, num_heads, window_size, mlp_ratio,
                               (drop_paths[2 * i], drop_paths[2 * i + 1]))
            for i in range(depth)
        ])
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        group_size = _images_per_group(x)
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


CPU_GROUP_BYTES = 2 << 20


def _images_per_group(x: Tensor) -> int | None:
    """How many images of a (B, H, W, C) batch a stage runs at once; None for the whole batch.

    For CPU inference, groups of about :data:`CPU_GROUP_BYTES` of activations keep every
    intermediate tensor in cache and small enough for the allocator to reuse freed memory instead
    of mapping fresh pages; images are independent, so the result does not depend on the grouping.
    Training (which keeps every activation for the backward pass anyway), other devices and
    compiled or exported graphs (which plan their own buffers) take the whole batch.
    """
    if (x.device.type != "cpu" or torch.is_grad_enabled() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting()):
        return None
    image_bytes = max(math.prod(x.shape[1:]) * x.element_size(), 1)
    return max(CPU_GROUP_BYTES // image_bytes, 1)


class DaViT(nn.Module):
    """DaViT backbone returning NCHW feature maps of the stages in ``out_indices``.

    Args:
        arch: an architecture name (``tiny`` ... ``giant``), a dict with ``embed_dims``, ``depths``,
            ``num_heads`` (and optionally ``window_size``, ``mlp_ratio``) or a :class:`DaViTArch`.
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
        self.arch = resolve_arch(arch)
        self.semantics = check_semantics(semantics)
        dims, depths = self.arch.embed_dims, self.arch.depths
        num_stages = len(dims)
        self.out_indices = self._check_out_indices(out_indices, num_stages)
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f"frozen_stages must be between -1 and {num_stages}, got {frozen_stages}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.frozen_stages = frozen_stages
        self.embed_dims = dims
        self.num_features = dims[-1]

        self.stem = Stem(in_chans, dims[0], padding=semantics)
        rates = torch.linspace(0, drop_path_rate, 2 * sum(depths), device="cpu").tolist()
        stages, offset = [], 0
        for i, (dim, depth, heads) in enumerate(zip(dims, depths, self.arch.num_heads)):
            stages.append(DaViTStage(dims[i - 1] if i else dim, dim, depth, heads,
                                     self.arch.window_size, self.arch.mlp_ratio,
                                     rates[offset:offset + 2 * depth], downsample=i > 0))
            offset += 2 * depth
        self.stages = nn.ModuleList(stages)
        self.set_grad_checkpointing(grad_checkpointing)
        self.apply(_init_weights)
        self._freeze()

    @staticmethod
    def _check_out_indices(out_indices: Iterable[int], num_stages: int) -> tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        resolved = []
        for index in out_indices:
            if not -num_stages <= index < num_stages:
                raise ValueError(f"out_indices entry {index} is out of range for {num_stages} stages")
            resolved.append(index % num_stages)
        if not resolved:
            raise ValueError("out_indices must name at least one stage")
        return tuple(sorted(set(resolved)))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.stem, *self.stages[:self.frozen_stages]]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> "DaViT":
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
        return self

    def forward_stages(self, x: Tensor, last: int | None = None) -> list[Tensor]:
        """Run the stem and stages 0..``last``; return every stage's (B, H, W, C) output."""
        if x.ndim != 4:
            raise ValueError(f"expected an image batch of shape (N, C, H, W), got {tuple(x.shape)}")
        last = len(self.stages) - 1 if last is None else last
        x = self.stem(x)
        outputs = []
        for stage in self.stages[:last + 1]:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        outputs = self.forward_stages(x, last=self.out_indices[-1])
        return tuple(outputs[i].permute(0, 3, 1, 2) for i in self.out_indices)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
