"""The mmpretrain-style entry points: get_model, inference_model."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint.card import ModelCard, default_card
from .checkpoint.load import HEAD_KEYS, checkpoint_num_classes, load_checkpoint, load_into, load_pretrained
from .data import ImageLoadError, TestTransform, build_test_transform, imagenet_classes
from .engine.predict import class_probabilities
from .errors import CheckpointMismatchError, InvalidArgumentError
from .exported import ExportedModel, is_exported_file, open_exported
from .model import DaViTClassifier, Florence2Encoder, build_model, is_florence2
from .records import error_record, prediction_record
from .resolve import ModelRef, ModelSource, pretrained_source, resolve_device, resolve_model

logger = logging.getLogger("davit")

ImageInput = Any  # a file path, a PIL image or an HxWx3 uint8 array
Model = DaViTClassifier | Florence2Encoder


def get_model(model: ModelSource, pretrained: bool | str | Path | None = None,
              num_classes: int | None = None, device: str | torch.device | None = None,
              semantics: str | None = None, progress: bool = True,
              **backbone_options: Any) -> Model:
    """Build a DaViT classifier (a :class:`Florence2Encoder` for a Florence-2 tower) from a zoo
    name (``davit-tiny_3rdparty_in1k``), an architecture name (``tiny``), a custom architecture
    (dict, JSON object or record), an mmpretrain-style config file, or a checkpoint file, URL,
    ``save_pretrained`` folder or ``hf-hub:`` name (see :func:`davit.resolve.resolve_model`). The
    model's card (architecture, class names, preprocessing) comes from the weights when they carry
    one; ``model.card`` and ``model.class_names`` hold it.

    Args:
        pretrained: False for random weights, True for the model's own weights (the zoo entry's,
            the checkpoint's, the config's ``load_from``), or a checkpoint path, URL, folder or
            ``hf-hub:`` name in any supported format. The default (None) loads the weights when
            ``model`` names weights (a file, URL, folder or ``hf-hub:`` name) and builds random
            weights for a zoo name, architecture or config, as mmpretrain does.
        num_classes: classifier size; defaults to the checkpoint's (or the zoo's) class count. A
            different count re-initialises the classifier layer for fine-tuning. A Florence-2
            tower has none (0) unless asked for; it keeps the weights' projector, if any.
        device: where to put the model.
        semantics: ``"official"`` or ``"mmpretrain"`` (mmpretrain's port); default: the card's.
        backbone_options: ``drop_path_rate``, ``out_indices``, ``frozen_stages``,
            ``grad_checkpointing``, ``in_chans``.
    """
    target = resolve_device(device) if device is not None else None  # fail before any download
    ref = resolve_model(model, progress=progress)
    source = pretrained_source(ref, model, pretrained)
    if source is not None and source == ref.weights and ref.state_dict is not None:
        state_dict, file_card = ref.state_dict, None  # read while resolving: a file without a card
    elif source is not None:
        state_dict, file_card = load_checkpoint(source, progress)
    else:
        state_dict, file_card = None, None
    card = _card(ref, file_card, state_dict, num_classes, semantics)
    net = build_model(card.arch, card.num_classes, card.semantics, _projection_dim(card, state_dict),
                      **{**ref.backbone_options, **backbone_options})
    if state_dict is not None:
        _load(net, state_dict)
    _attach(net, card)
    net.eval()
    return net.to(target) if target is not None else net


def _card(ref: ModelRef, file_card: ModelCard | None, state_dict: Mapping[str, torch.Tensor] | None,
          num_classes: int | None, semantics: str | None) -> ModelCard:
    """The card of the model being built: the weights' card, else the model source's, with the
    class count of the weights and then the caller's, and the caller's semantics."""
    if file_card is not None and file_card.architecture != ref.arch:
        theirs, ours = file_card.architecture, ref.arch
        raise CheckpointMismatchError(
            f"the checkpoint's model card describes another architecture (embed_dims="
            f"{list(theirs.embed_dims)}, depths={list(theirs.depths)}) than the model asked for "
            f"(embed_dims={list(ours.embed_dims)}, depths={list(ours.depths)}); load the "
            "checkpoint by itself, as the model")
    card = file_card or ref.card or default_card(ref.arch, 0 if is_florence2(ref.arch) else ref.num_classes)
    card = _with_classes(card, checkpoint_num_classes(state_dict) if state_dict is not None else None)
    card = _with_classes(card, num_classes)
    return replace(card, semantics=semantics) if semantics is not None else card


def _projection_dim(card: ModelCard, state_dict: Mapping[str, torch.Tensor] | None) -> int | None:
    """A Florence-2 tower's projector width in the weights, 0 when they have none (timm's tower);
    None (the architecture's own) for random weights and for DaViT classifiers."""
    if state_dict is None or not is_florence2(card.architecture):
        return None
    weight = state_dict.get("projector.image_projection.weight")
    return 0 if weight is None else int(weight.shape[0])


def _load(net: Model, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load davit-format weights strictly; a Florence-2 encoder keeps its own fresh head where the
    weights have none for its class count (and drops theirs when it has no head)."""
    if isinstance(net, DaViTClassifier):
        load_pretrained(net, state_dict)
        return
    weights = dict(state_dict)
    if net.head is None:
        weights = {k: v for k, v in weights.items() if not k.startswith("head.")}
    elif checkpoint_num_classes(weights) != net.num_classes:
        logger.warning("the weights have no classifier for the model's %d classes: head.fc is "
                       "initialised afresh (fine-tuning set-up)", net.num_classes)
        weights = {k: v for k, v in weights.items() if k not in HEAD_KEYS}
        weights.update({k: v for k, v in net.state_dict().items() if k.startswith("head.") and k not in weights})
    load_into(net, weights)


def _with_classes(card: ModelCard, num_classes: int | None) -> ModelCard:
    """``card`` for a classifier of ``num_classes`` (its names dropped: they belong to the old
    classifier, except ImageNet's for 1000)."""
    if num_classes is None or num_classes == card.num_classes:
        return card
    names = tuple(imagenet_classes()) if num_classes == 1000 else None
    return replace(card, num_classes=num_classes, class_names=names)


def _attach(model: Model, card: ModelCard) -> None:
    model.card = card
    model.class_names = list(card.class_names) if card.class_names is not None else None


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
    elif not isinstance(model, (DaViTClassifier, Florence2Encoder)):
        model = get_model(model, pretrained=pretrained, device=device, **model_options)
    else:
        if isinstance(pretrained, (str, Path)):
            _load_weights(model, pretrained)
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


def _load_weights(model: Model, source: str | Path) -> None:
    """Load ``source`` into ``model`` (a different class count keeps the model's classifier) and
    take the card the weights carry."""
    state_dict, file_card = load_checkpoint(source)
    ref = ModelRef(model.arch, model.num_classes, None, getattr(model, "card", None))
    card = _card(ref, file_card, state_dict, model.num_classes, model.semantics)
    _load(model, state_dict)
    _attach(model, card)


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
