"""DaViT as the backbone of detection and segmentation stacks, with the official dense backbone's
semantics: every output stage goes through its own LayerNorm (``norm0`` ... ``norm3`` in the
official code, ``out_norms`` here) and comes out as an NCHW map.

Classification weights start it (their head dropped, the output norms initialised, each logged),
and so do Florence-2's towers and the official dense / mmdet checkpoints (see
:mod:`davit.checkpoint.formats`). Its state dict is this library's backbone keys without the
``backbone.`` prefix; :func:`save_backbone` writes it as a checkpoint in this library's layout
with its card, which :func:`backbone` reads back (by file name alone) and ``davit convert``
writes in any layout.
"""
from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import replace
from itertools import accumulate
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..checkpoint.card import default_card
from ..checkpoint.io import save_state_dict_file
from ..checkpoint.load import load_backbone, load_checkpoint
from ..checkpoint.resolve import ModelSource, pretrained_source, resolve_model
from ..errors import InvalidArgumentError
from ..model import DaViT, DaViTArch, resolve_arch

DENSE_OUT_INDICES = (0, 1, 2, 3)  # the official detection and segmentation configs'


class DenseBackbone(DaViT):
    """A :class:`~davit.model.DaViT` of the architecture with output norms: ``forward(x)`` returns
    a tuple of the ``out_indices`` stages' outputs (B, C, H/stride, W/stride), each normalised.

    ``frozen_stages`` k freezes the stem and stages 0..k-1 with their output norms (eval mode, no
    gradients, also after ``train()``). ``drop_path_rate``, ``grad_checkpointing``, ``in_chans``
    and ``semantics`` are :class:`DaViT`'s.

    Attributes:
        out_channels: the width of each output, as torchvision's ``FeaturePyramidNetwork`` takes
            for its ``in_channels_list``.
        strides: each output's reduction of the input (4, 8, 16, 32 for DaViT).
        feature_info: one dict per output with ``num_chs``, ``reduction`` and ``module``, as timm's
            feature extractors describe theirs.
    """

    def __init__(self, arch: str | dict | DaViTArch = "tiny", out_indices: Iterable[int] = DENSE_OUT_INDICES,
                 **options: Any) -> None:
        super().__init__(replace(resolve_arch(arch), out_norms=True), out_indices=out_indices, **options)
        reductions = list(accumulate(self.arch.patch_strides, operator.mul))
        self.out_channels = [self.embed_dims[i] for i in self.out_indices]
        self.strides = [reductions[i] for i in self.out_indices]
        self.feature_info = [{"num_chs": channels, "reduction": stride, "module": f"out_norms.{i}"}
                             for i, channels, stride in zip(self.out_indices, self.out_channels, self.strides)]

    def _frozen_modules(self) -> list[nn.Module]:
        return [*super()._frozen_modules(), *self.out_norms[:max(self.frozen_stages, 0)]]

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if x.ndim == 4 and min(x.shape[-2:]) < self.strides[-1]:
            raise InvalidArgumentError(
                f"the backbone needs images at least {self.strides[-1]} pixels a side (the stride of "
                f"its deepest output, stage {self.out_indices[-1]}); got {x.shape[-2]} x {x.shape[-1]}")
        return super().forward(x)


def backbone(name_or_arch: ModelSource, pretrained: bool | str | Path | None = None,
             out_indices: Iterable[int] = DENSE_OUT_INDICES, progress: bool = True,
             **options: Any) -> DenseBackbone:
    """A :class:`DenseBackbone` of any model :func:`davit.checkpoint.resolve.resolve_model` takes (zoo,
    architecture and Florence-2 names, records, configs, checkpoints, folders, ``hf-hub:``).

    Args:
        pretrained: False for random weights, True for the model's own (the zoo entry's), or a
            checkpoint path, URL, folder or ``hf-hub:`` name in any format of
            :mod:`davit.checkpoint.formats`; None (default) loads them when ``name_or_arch``
            names weights. Loaded as :func:`davit.checkpoint.load.load_backbone` says.
        out_indices: the stages returned, all four by default (a config's own are ignored: they
            are a classifier's).
        options: :class:`DenseBackbone`'s (``frozen_stages``, ``drop_path_rate``,
            ``grad_checkpointing``, ``in_chans``, ``semantics``; by default the weights' semantics).
    """
    ref = resolve_model(name_or_arch, progress=progress)
    source = pretrained_source(ref, name_or_arch, pretrained)
    state_dict, file_card = load_checkpoint(source, progress) if source is not None else (None, None)
    card = file_card or ref.card
    options = {**{k: v for k, v in ref.backbone_options.items() if k != "out_indices"}, **options}
    options.setdefault("semantics", card.semantics if card is not None else "official")
    model = DenseBackbone(ref.arch, out_indices=out_indices, **options)
    if state_dict is not None:
        load_backbone(model, state_dict)
    return model


def save_backbone(model: DenseBackbone, path: str | Path) -> Path:
    """Write ``model``'s weights (output norms included) and its card (architecture, semantics)
    to ``path`` (``.safetensors``, or ``.pth``), atomically; ``backbone(path)`` builds it again."""
    if not isinstance(model, DenseBackbone):
        raise InvalidArgumentError(f"save_backbone takes a DenseBackbone (davit.dense.backbone), not "
                                   f"{type(model).__name__}; save a classifier with davit.save_pretrained")
    card = default_card(model.arch, 0, model.semantics)
    state_dict = {f"backbone.{key}": value for key, value in model.state_dict().items()}
    return save_state_dict_file(state_dict, path, metadata=card.to_metadata())
