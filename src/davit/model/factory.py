"""The one place that picks the model class an architecture is built as."""
from __future__ import annotations

from typing import Any

from ..errors import InvalidArgumentError
from .archs import DaViTArch, resolve_arch
from .base import DaViTModel
from .classifier import DaViTClassifier
from .florence2 import Florence2Encoder, is_florence2


def build_model(arch: str | dict | DaViTArch, num_classes: int = 1000, semantics: str = "official",
                projection_dim: int | None = None, **backbone_options: Any) -> DaViTModel:
    """A :class:`Florence2Encoder` for a Florence-2 tower (``projection_dim`` None: Florence-2's,
    0: none), a :class:`DaViTClassifier` for every other architecture; ``card=`` gives it its card."""
    resolved = resolve_arch(arch)
    if not is_florence2(resolved):
        if projection_dim is not None:
            raise InvalidArgumentError("projection_dim is for Florence-2 towers only")
        return DaViTClassifier(resolved, num_classes=num_classes, semantics=semantics, **backbone_options)
    if semantics != "official":
        raise InvalidArgumentError(f"Florence-2's tower has one semantics (transformers'); "
                                   f"semantics {semantics!r} applies to DaViT classifiers only")
    if "in_chans" in backbone_options:
        raise InvalidArgumentError("Florence-2's tower takes RGB images; in_chans is not an option for it")
    return Florence2Encoder(resolved, projection_dim, num_classes, **backbone_options)
