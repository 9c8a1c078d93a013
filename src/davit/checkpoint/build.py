"""get_model: a DaViT model from any source a user names, with its weights and its card."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..data.classes import imagenet_classes
from ..errors import CheckpointMismatchError
from ..model import DaViTClassifier, DaViTModel, build_model, is_florence2
from .card import ModelCard, default_card
from .load import HEAD_KEYS, checkpoint_num_classes, load_checkpoint, load_into, load_pretrained
from .resolve import ModelRef, ModelSource, pretrained_source, resolve_device, resolve_model

logger = logging.getLogger("davit")

Model = DaViTModel


def get_model(model: ModelSource, pretrained: bool | str | Path | None = None,
              num_classes: int | None = None, device: str | torch.device | None = None,
              semantics: str | None = None, progress: bool = True,
              **backbone_options: Any) -> Model:
    """Build a DaViT classifier (a :class:`Florence2Encoder` for a Florence-2 tower) from a zoo
    name (``davit-tiny_3rdparty_in1k``), an architecture name (``tiny``), a custom architecture
    (dict, JSON object or record), an mmpretrain-style config file, or a checkpoint file, URL,
    ``save_pretrained`` folder or ``hf-hub:`` name (see :func:`davit.checkpoint.resolve.resolve_model`). The
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
                      card=card, **{**ref.backbone_options, **backbone_options})
    if state_dict is not None:
        _load(net, state_dict)
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


def load_weights(model: Model, source: str | Path) -> None:
    """Load ``source`` into ``model`` (a different class count keeps the model's classifier) and
    take the card the weights carry."""
    state_dict, file_card = load_checkpoint(source)
    ref = ModelRef(model.arch, model.num_classes, None, getattr(model, "card", None))
    card = _card(ref, file_card, state_dict, model.num_classes, model.semantics)
    _load(model, state_dict)
    model.set_card(card)
