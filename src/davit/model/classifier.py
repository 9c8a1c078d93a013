"""DaViT image classifier: backbone, then pooling, LayerNorm and a linear layer (:mod:`.head`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from ..errors import InvalidArgumentError
from .archs import DaViTArch, arch_name, resolve_arch, resolve_semantics
from .backbone import DaViT
from .base import DaViTModel
from .head import ClassifierHead

if TYPE_CHECKING:  # the card lives above the model; only its type is needed here
    from ..checkpoint.card import ModelCard


class DaViTClassifier(DaViTModel):
    """A DaViT backbone with a classification head.

    ``model(images)`` returns logits; :meth:`extract_feat` returns the backbone's NCHW feature maps
    (the stages in ``out_indices``) or the pooled, normalised features (``stage="pre_logits"``).
    Architectures without a head (``DaViTArch.head`` false) are backbones: Florence-2's towers are
    :class:`~davit.model.Florence2Encoder`, others :class:`DaViT`.
    """

    head: ClassifierHead  # always one (with no linear layer for num_classes=0)

    def __init__(self, arch: str | dict | DaViTArch = "tiny", num_classes: int = 1000,
                 semantics: str = "official", card: ModelCard | None = None, **backbone_options) -> None:
        super().__init__(card)
        if not isinstance(num_classes, int) or num_classes < 0:
            raise InvalidArgumentError(f"num_classes must be a non-negative integer, got {num_classes!r}")
        resolved = resolve_arch(arch)
        if not resolved.head:
            raise InvalidArgumentError(f"architecture {arch_name(resolved)} has no classification head; build "
                                       "it with davit.model.build_model (Florence2Encoder for Florence-2's "
                                       "towers) or davit.DaViT for its features")
        norm_first = resolve_semantics(semantics).head_norm_first
        self.semantics = semantics
        self.backbone = DaViT(resolved, semantics=semantics, **backbone_options)
        self.num_classes = num_classes
        self.num_features = self.backbone.num_features
        self.head = ClassifierHead(self.num_features, num_classes, norm_first=norm_first)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final linear layer with a freshly initialised one for ``num_classes``."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise InvalidArgumentError(f"num_classes must be a non-negative integer, got {num_classes!r}")
        fresh = ClassifierHead(self.num_features, num_classes, norm_first=self.head.norm_first)
        self.head.fc = fresh.fc.to(self.head.norm.weight.device)
        self.num_classes = num_classes
