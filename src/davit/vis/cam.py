"""Class activation maps of DaViT classifiers through the ``grad-cam`` package.

``grad-cam`` hooks a layer and expects NCHW activations; a DaViT stage returns (B, H, W, C)
tokens, so the hook's tensors are permuted first (:func:`channels_first`). The map is computed on
the model's input (the centre crop of the card's preprocessing) and drawn back onto that box of
the original image (:func:`davit.vis.drawing.heatmap_overlay`): outside it the image is dimmed.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..data.images import ImageSource
from ..errors import InvalidArgumentError, require
from .drawing import DISPLAY_SIZE, fit, heatmap_overlay
from .inputs import backbone_of, model_input, resolve_stage
from .regions import InputRegion

# --method value -> grad-cam class; eigencam needs no gradient and ignores the target class
CAM_METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "scorecam": "ScoreCAM",
               "eigencam": "EigenCAM"}


@dataclass(frozen=True)
class ClassActivationMap:
    """A map of where the model found evidence for ``target_class`` in one image.

    ``heatmap``: (H, W) values in [0, 1] over the model's input (the preprocessed crop);
    ``region``: the box of ``image`` that input covers; ``score``: the model's probability of
    the target class; ``top_class``: its best class.
    """

    image: Image.Image
    heatmap: np.ndarray
    region: InputRegion
    method: str
    stage: int
    target_class: int
    class_name: str | None
    score: float
    top_class: int

    def overlay(self, display_size: int = DISPLAY_SIZE) -> Image.Image:
        """The image with the heat map blended onto the region the model saw, scaled for display."""
        return fit(heatmap_overlay(self.image, self.heatmap, self.region), display_size)


def channels_first(tokens: Tensor) -> Tensor:
    """A stage's (B, H, W, C) tokens as the (B, C, H, W) maps grad-cam expects."""
    return tokens.permute(0, 3, 1, 2)


def class_activation_map(model: nn.Module, image: ImageSource, target_class: int | str | None = None,
                         method: str = "gradcam", stage: int = -1) -> ClassActivationMap:
    """The class activation map of ``target_class`` (an index or a class name; default: the
    model's best class) for ``image``, from the output of ``stage`` (default: the last, whose
    tokens feed the classifier; earlier stages give finer but less class-specific maps).

    ``method``: ``gradcam``, ``gradcam++``, ``scorecam`` (one forward pass per channel of the
    stage: slow) or ``eigencam`` (the first principal component of the activations: the same map
    for every class). Raises :class:`~davit.errors.ImageLoadError` for an unreadable image and
    :class:`~davit.errors.InvalidArgumentError` for a class or stage the model does not have.
    """
    require("pytorch_grad_cam", "vis", "class activation maps")
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method not in CAM_METHODS:
        raise InvalidArgumentError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    num_classes = _classifier_size(model)
    stage_index, stage_module = resolve_stage(backbone_of(model), stage)
    names = getattr(model, "class_names", None)
    target = _target_index(target_class, num_classes, names)
    inputs = model_input(model, image)  # after the cheap checks: reading the image is the slow part
    model.eval()
    with torch.no_grad():
        probabilities = model(inputs.tensor).float().softmax(dim=-1)[0]
    target = int(probabilities.argmax()) if target is None else target
    cam_class: Any = getattr(pytorch_grad_cam, CAM_METHODS[method])
    cam = cam_class(model=model, target_layers=[stage_module], reshape_transform=channels_first)
    try:
        with torch.enable_grad():
            heatmap = cam(input_tensor=inputs.tensor, targets=[ClassifierOutputTarget(target)])[0]
    finally:
        cam.activations_and_grads.release()  # the hooks stay on the model otherwise
        model.zero_grad(set_to_none=True)
    return ClassActivationMap(inputs.image, np.asarray(heatmap, dtype=np.float32), inputs.region, method,
                              stage_index, target, names[target] if names else None,
                              float(probabilities[target]), int(probabilities.argmax()))


def _classifier_size(model: nn.Module) -> int:
    """The model's class count; a model without a classification head has no class to map."""
    num_classes = getattr(model, "num_classes", 0)
    if not num_classes or getattr(model, "head", None) is None:
        raise InvalidArgumentError("a class activation map needs a classifier; this model has no classification "
                                   "head (a Florence-2 tower): fine-tune it with num_classes > 0 first")
    return int(num_classes)


def _target_index(target: int | str | None, num_classes: int, names: list[str] | None) -> int | None:
    """``target`` as a class index, checked against the model's classes (None stays None)."""
    if target is None:
        return None
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if names is None or target not in names:
            raise InvalidArgumentError(f"the model has no class named {target!r} ({_known_classes(target, names)}); "
                                       f"a class index 0..{num_classes - 1} is accepted too")
        return names.index(target)
    index = int(target)
    if not 0 <= index < num_classes:
        raise InvalidArgumentError(f"target class {index} is outside the model's {num_classes} classes; pass "
                                   f"an index 0..{num_classes - 1}")
    return index


def _known_classes(target: str, names: list[str] | None, shown: int = 10) -> str:
    """A few of the model's own class names for an error: the closest matches to ``target``
    first, else the first ``shown``, with the count."""
    if names is None:
        return "its class names are unknown"
    close = difflib.get_close_matches(target, names, n=5, cutoff=0.6)
    lowered = [name for name in names if name.lower() == target.lower() and name not in close]
    close = lowered + close
    first = ", ".join(repr(name) for name in names[:shown]) + (", ..." if len(names) > shown else "")
    listing = f"its {len(names)} classes are {first}"
    if close:
        return f"did you mean {', '.join(repr(name) for name in close)}? {listing}"
    return listing
