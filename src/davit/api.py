"""The mmpretrain-style entry points: get_model, inference_model."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint.build import Model, get_model, load_weights
from .checkpoint.resolve import ModelSource, resolve_device
from .data import ImageLoadError, TestTransform, build_test_transform
from .engine.predict import class_probabilities
from .errors import InvalidArgumentError
from .exported import ExportedModel, is_exported_file, open_exported
from .model import DaViTModel, Florence2Encoder
from .records import error_record, prediction_record

logger = logging.getLogger("davit")

ImageInput = Any  # a file path, a PIL image or an HxWx3 uint8 array


def inference_model(model: Model | ExportedModel | ModelSource, inputs: ImageInput | Sequence[ImageInput],
                    device: str | torch.device | None = None, batch_size: int = 16,
                    pretrained: bool | str | Path = True, **model_options: Any) -> dict | list[dict]:
    """Classify one image (returns a dict) or a list of images (returns a list of dicts), each
    preprocessed as the model's card says.

    Each result is a prediction record (:mod:`davit.records`, the shape ``davit predict --json``
    and the server give): mmpretrain's keys ``pred_label``, ``pred_score``, ``pred_scores`` (all
    class probabilities, a NumPy array as in mmpretrain), ``pred_class`` when the model knows its
    class names, the five best as ``topk``, and ``image`` (a file input) / ``index`` (in a list). As in mmpretrain,
    ``model`` is a model or anything :func:`get_model` takes (a name, a config file, a
    checkpoint), built with ``pretrained`` (default: its own weights); ``pretrained`` naming a
    checkpoint is loaded into a given model too. A file ``davit export`` wrote (``.onnx``, ``.xml``,
    ``.pt2``) runs on its runtime with its card (:func:`davit.exported.open_exported`). In a list,
    an image that cannot be read gives ``{"error": {"code", "message"}}`` in its place and is logged; the other
    results are kept. A single unreadable image raises :class:`ImageLoadError`.
    """
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(model, (str, Path)) and is_exported_file(model):
        model = open_exported(model)
    if isinstance(model, ExportedModel):
        if not model.classifies:
            raise InvalidArgumentError(f"{model.path.name} gives {model.output}, not class scores; export a "
                                       "classifier to classify")
    elif not isinstance(model, DaViTModel):
        model = get_model(model, pretrained=pretrained, device=device, **model_options)
    else:
        if isinstance(pretrained, (str, Path)):
            load_weights(model, pretrained)
        if device is not None:
            model = model.to(resolve_device(device))
    if isinstance(model, Florence2Encoder) and model.head is None:
        raise InvalidArgumentError("a Florence-2 tower without a classification head does not classify; "
                                   "use its embed() or encode_image(), or fine-tune it with num_classes > 0")
    single = not isinstance(inputs, (list, tuple))
    items = [inputs] if single else list(inputs)
    card = getattr(model, "card", None)
    transform = card.preprocessing.transform() if card is not None else build_test_transform()
    tensors, errors = _preprocess(items, transform, raise_errors=single)
    probabilities = _probabilities(model, tensors, batch_size)
    names = getattr(model, "class_names", None)
    results = []
    for index, item in enumerate(items):
        image = str(item) if isinstance(item, (str, Path)) else None
        position = None if single else index
        if index in errors:
            results.append(error_record(errors[index], image=image, index=position))
        else:
            record = prediction_record(probabilities[index], names, image=image, index=position)
            if "error" not in record:
                record["pred_scores"] = probabilities[index]  # mmpretrain gives them as an array
            results.append(record)
    return results[0] if single else results


def _preprocess(items: list[ImageInput], transform: TestTransform,
                raise_errors: bool) -> tuple[dict[int, torch.Tensor], dict[int, str]]:
    """The test-time tensors of the readable items and the messages of the others, by index."""
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


def _probabilities(model: Model | ExportedModel, tensors: dict[int, torch.Tensor],
                   batch_size: int) -> dict[int, np.ndarray]:
    """Class probabilities of each tensor, in batches, through the evaluation primitive."""
    param = next(model.parameters(), torch.zeros(()))  # an exported file's runtime takes float32 on the CPU
    model.eval()
    indices = list(tensors)
    probabilities: dict[int, np.ndarray] = {}
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        batch = torch.stack([tensors[i] for i in chunk]).to(param.device, param.dtype)
        probabilities.update(zip(chunk, class_probabilities(model, batch, amp=None).cpu().numpy()))
    return probabilities
