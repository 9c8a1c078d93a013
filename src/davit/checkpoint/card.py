"""The model card: what a set of weights is, stored with them so that every loader can rebuild and
feed the model as it was trained.

A card holds the architecture (a name of :data:`davit.model.ARCHS` or the full record), the class
count and names, the test-time preprocessing and the semantics. Checkpoints written by this
library carry it in their metadata; a checkpoint without one gets :func:`default_card`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, TestTransform, build_test_transform
from ..model.archs import DaViTArch


@dataclass(frozen=True)
class Preprocessing:
    """Test-time preprocessing: resize the short edge, centre-crop, normalise (0-255 scale)."""

    resize_edge: int = 236
    crop_size: int = 224
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def transform(self) -> TestTransform:
        """The callable that turns an image (path, PIL image or array) into the model's input."""
        return build_test_transform(self.resize_edge, self.crop_size, self.mean, self.std,
                                    self.interpolation)


@dataclass(frozen=True)
class ModelCard:
    """What a set of weights is; see the module docstring."""

    arch: str | DaViTArch
    num_classes: int
    class_names: tuple[str, ...] | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    semantics: str = "official"
