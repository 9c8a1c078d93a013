"""The mmpretrain-style entry points: get_model, inference_model."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint.load import checkpoint_num_classes, load_pretrained, read_checkpoint
from .data import ImageLoadError, build_test_transform, imagenet_classes
from .engine.predict import class_probabilities
from .errors import InvalidArgumentError
from .model import DaViTArch, DaViTClassifier
from .resolve import resolve_device, resolve_model, resolve_weights

logger = logging.getLogger("davit")

ImageInput = Any  # a file path, a PIL image or an HxWx3 uint8 array


def get_model(model: str | dict | DaViTArch, pretrained: bool | str | Path = False,
              num_classes: int | None = None, device: str | torch.device | None = None,
              semantics: str = "official", progress: bool = True,
              **backbone_options: Any) -> DaViTClassifier:
    """Build a DaViT classifier by zoo name (``davit-tiny_3rdparty_in1k``), architecture name
    (``tiny``), custom architecture dict or JSON object (see :func:`davit.resolve.resolve_model`).

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
    ref = resolve_model(model)
    target = resolve_device(device) if device is not None else None  # fail before any download
    source = _weights_source(model, pretrained)
    state_dict = read_checkpoint(source, progress=progress) if source is not None else None
    ckpt_classes = checkpoint_num_classes(state_dict) if state_dict is not None else None
    classes = num_classes if num_classes is not None else (ckpt_classes or ref.num_classes)
    net = DaViTClassifier(ref.arch, num_classes=classes, semantics=semantics, **backbone_options)
    if state_dict is not None:
        load_pretrained(net, state_dict)
    if classes == 1000:
        net.class_names = imagenet_classes()
    net.eval()
    return net.to(target) if target is not None else net


def _weights_source(model: str | dict | DaViTArch, pretrained: bool | str | Path) -> str | Path | None:
    """The checkpoint that ``pretrained`` asks for: None, the zoo entry's weights or a source."""
    if pretrained is True:
        if not isinstance(model, str):
            raise InvalidArgumentError("a custom architecture has no published weights; pass "
                                       "pretrained=<path, URL or hf-hub: name>")
        return resolve_weights(model)
    if pretrained is False or pretrained is None:
        return None
    if isinstance(pretrained, (str, Path)):
        return pretrained
    raise InvalidArgumentError(f"pretrained must be a bool, a path, a URL or an hf-hub: name, "
                               f"not {type(pretrained).__name__}")


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
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(model, str):
        model = get_model(model, pretrained=True, device=device, **model_options)
    elif device is not None:
        model = model.to(resolve_device(device))
    single = not isinstance(inputs, (list, tuple))
    items = [inputs] if single else list(inputs)
    tensors, errors = _preprocess(items, raise_errors=single)
    probabilities = _probabilities(model, tensors, batch_size)
    names = getattr(model, "class_names", None)
    results = [{"error": errors[index]} if index in errors
               else _prediction(probabilities[index], names) for index in range(len(items))]
    return results[0] if single else results


def _preprocess(items: list[ImageInput], raise_errors: bool) -> tuple[dict[int, torch.Tensor],
                                                                        dict[int, str]]:
    """The test-time tensors of the readable items and the messages of the others, by index."""
    transform = build_test_transform()
    tensors: dict[int, torch.Tensor] = {}
    errors: dict[int, str] = {}
    for index, item in enumerate(items):
        try:
            tensors[index] = transform(item)
        except ImageLoadError as error:
            if raise_errors:
                raise
            logger.error("skipping input %d: %s", index, error)
            errors[index] = str(error)
    return tensors, errors


def _probabilities(model: DaViTClassifier, tensors: dict[int, torch.Tensor],
                   batch_size: int) -> dict[int, np.ndarray]:
    """Class probabilities of each tensor, in batches, through the evaluation primitive."""
    param = next(model.parameters())
    model.eval()
    indices = list(tensors)
    probabilities: dict[int, np.ndarray] = {}
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        batch = torch.stack([tensors[i] for i in chunk]).to(param.device, param.dtype)
        probabilities.update(zip(chunk, class_probabilities(model, batch, amp=None).cpu().numpy()))
    return probabilities


def _prediction(scores: np.ndarray, names: Sequence[str] | None) -> dict:
    """One image's result, with mmpretrain's keys."""
    label = int(scores.argmax())
    result = {"pred_label": label, "pred_score": float(scores[label]), "pred_scores": scores}
    if names is not None:
        result["pred_class"] = names[label]
    return result
