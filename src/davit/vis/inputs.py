"""What every picture starts from: the original image, the model's input made from it with the
model card's preprocessing, the region of the image that input covers, and the stage looked at."""
from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from PIL import Image
from torch import nn

from ..checkpoint.card import Preprocessing
from ..data.images import ImageSource, load_image
from ..errors import InvalidArgumentError
from ..model.backbone import DaViT, DaViTStage
from .regions import InputRegion, input_region


@dataclass(frozen=True)
class ModelInput:
    """An image, its (1, 3, H, W) input tensor on the model's device, and where that input lies in
    the image."""

    image: Image.Image
    tensor: torch.Tensor
    region: InputRegion


def model_input(model: nn.Module, image: ImageSource) -> ModelInput:
    """Load ``image`` (raises :class:`~davit.errors.ImageLoadError`) and preprocess it as
    ``model.card`` says (the DaViT default without a card)."""
    card = getattr(model, "card", None)
    preprocessing = card.preprocessing if card is not None else Preprocessing()
    pil = load_image(image)
    param = next(model.parameters())
    tensor = preprocessing.transform()(pil).unsqueeze(0).to(param.device, param.dtype)
    return ModelInput(pil, tensor, input_region(pil.size, preprocessing))


def backbone_of(model: nn.Module) -> DaViT:
    """The DaViT backbone of a classifier or Florence-2 encoder (or the backbone itself)."""
    backbone = model if isinstance(model, DaViT) else getattr(model, "backbone", None)
    if not isinstance(backbone, DaViT):
        raise InvalidArgumentError(f"expected a DaViT model (davit.get_model), not {type(model).__name__}")
    return backbone


def resolve_stage(backbone: DaViT, stage: int) -> tuple[int, DaViTStage]:
    """The index (counted from 0) and module of ``stage``; negative numbers count from the end."""
    count = len(backbone.stages)
    if not -count <= stage < count:
        raise InvalidArgumentError(f"stage {stage} does not exist: this model has {count} stages, "
                                   f"0..{count - 1} (or -{count}..-1 from the end)")
    index = stage % count
    return index, cast(DaViTStage, backbone.stages[index])
