"""The mmpretrain-style entry points: get_model, inference_model."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .checkpoint.load import checkpoint_num_classes, load_pretrained, read_checkpoint
from .data import ImageLoadError, build_test_transform, imagenet_classes
from .model import ARCHS, DaViTArch, DaViTClassifier
from .zoo import get_model_info

logger = logging.getLogger("davit")

ImageInput = Any  # a file path, a PIL image or an HxWx3 uint8 array


def get_model(model: str | dict | DaViTArch, pretrained: bool | str | Path = False,
              num_classes: int | None = None, device: str | torch.device | None = None,
              semantics: str = "official", progress: bool = True,
              **backbone_options: Any) -> DaViTClassifier:
    """Build a DaViT classifier by zoo name (``davit-tiny_3rdparty_in1k``), architecture name
    (``tiny``) or custom architecture dict.

    Args:
        pretrained: False for random weights, True for the zoo entry's weights, or a checkpoint
            path, URL or ``hf-hub:`` name in any supported format.
        num_classes: classifier size; defaults to the checkpoint's (or the zoo's) class count. A
            different count re-initialises the classifier layer for fine-tuning.
        device: where to put the model.
        semantics: ``"official"`` (default) or ``"mmpretrain"`` to reproduce mmpretrain's port.
        backbone_options: ``drop_path_rate``, ``out_indices``, ``frozen_stages``,
            ``grad_checkpointing``, ``in_chans``.
    """
    arch, default_classes, weights = _resolve(model)
    if pretrained is True:
        if weights is None:
            raise ValueError(f"{model!r} has no published weights; pass pretrained=<path or URL>, "
                             "or choose a name from list_models(pretrained=True)")
        source = weights
    elif pretrained is False or pretrained is None:
        source = None
    elif isinstance(pretrained, (str, Path)):
        source = pretrained
    else:
        raise TypeError(f"pretrained must be a bool, a path, a URL or an hf-hub: name, "
                        f"not {type(pretrained).__name__}")

    state_dict = read_checkpoint(source, progress=progress) if source is not None else None
    ckpt_classes = checkpoint_num_classes(state_dict) if state_dict is not None else None
    classes = num_classes if num_classes is not None else (ckpt_classes or default_classes)
    net = DaViTClassifier(arch, num_classes=classes, semantics=semantics, **backbone_options)
    if state_dict is not None:
        load_pretrained(net, state_dict)
    if classes == 1000:
        net.class_names = imagenet_classes()
    net.eval()
    return net.to(device) if device is not None else net


def _resolve(model: str | dict | DaViTArch) -> tuple[str | dict | DaViTArch, int, str | None]:
    """(architecture, default class count, weights) for a zoo name, an arch name or an arch."""
    if isinstance(model, str) and model in ARCHS:
        return model, 1000, None
    if isinstance(model, str):
        info = get_model_info(model)
        return info.arch, info.num_classes, info.weights
    return model, 1000, None


def inference_model(model: DaViTClassifier | str, inputs: ImageInput | Sequence[ImageInput],
                    device: str | torch.device | None = None, batch_size: int = 16,
                    **model_options: Any) -> dict | list[dict]:
    """Classify one image (returns a dict) or a list of images (returns a list of dicts).

    Each result has mmpretrain's keys ``pred_label``, ``pred_score``, ``pred_scores`` (all class
    probabilities) and, when the model knows its class names, ``pred_class``. ``model`` may be a
    model or a zoo name (loaded with its pretrained weights). In a list, an image that cannot be
    read gives ``{"error": message}`` in its place and is logged; the other results are kept. A
    single unreadable image raises :class:`ImageLoadError`.
    """
    if isinstance(model, str):
        model = get_model(model, pretrained=True, device=device, **model_options)
    elif device is not None:
        model = model.to(device)
    single = not isinstance(inputs, (list, tuple))
    items = [inputs] if single else list(inputs)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")

    transform = build_test_transform()
    tensors: list[torch.Tensor | None] = []
    errors: dict[int, str] = {}
    for index, item in enumerate(items):
        try:
            tensors.append(transform(item))
        except ImageLoadError as error:
            if single:
                raise
            logger.error("skipping input %d: %s", index, error)
            errors[index] = str(error)
            tensors.append(None)

    good = [i for i, t in enumerate(tensors) if t is not None]
    param = next(model.parameters())
    probabilities: dict[int, np.ndarray] = {}
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(good), batch_size):
            chunk = good[start:start + batch_size]
            batch = torch.stack([tensors[i] for i in chunk]).to(param.device, param.dtype)
            scores = model(batch).float().softmax(dim=-1).cpu().numpy()
            probabilities.update(zip(chunk, scores))

    names = getattr(model, "class_names", None)
    results = []
    for index in range(len(items)):
        if index in errors:
            results.append({"error": errors[index]})
            continue
        scores = probabilities[index]
        label = int(scores.argmax())
        result = {"pred_label": label, "pred_score": float(scores[label]), "pred_scores": scores}
        if names is not None:
            result["pred_class"] = names[label]
        results.append(result)
    return results[0] if single else results
