"""Load any published DaViT checkpoint into a model, strictly."""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, CheckpointMismatchError
from .card import ModelCard, card_from_metadata, guess_arch
from .formats import to_davit
from .io import read_checkpoint_file
from .resolve import fetch_weights

logger = logging.getLogger("davit")

HEAD_KEYS = ("head.fc.weight", "head.fc.bias")
_OUT_NORM = re.compile(r"^out_norms\.\d+\.")  # a backbone's output norms, by its own keys


def load_checkpoint(source: str | Path, progress: bool = True,
                    allow_non_finite: bool = False) -> tuple[dict[str, Tensor], ModelCard | None]:
    """Read a checkpoint from any weights source (see :func:`davit.checkpoint.resolve.resolve_weights`):
    its tensors renamed to this library's keys, and the model card it carries (checked against
    the tensors), None when it has none. Weights with NaN or infinite values are refused (a model
    built from them can only give garbage) unless ``allow_non_finite``, for research on them."""
    path = fetch_weights(source, progress=progress)
    state_dict, meta = read_checkpoint_file(path)
    state_dict = to_davit(state_dict)
    if not allow_non_finite:
        check_finite(state_dict, str(path))
    card = card_from_metadata(meta, str(path))
    if card is not None:
        card.check(state_dict, str(path))
    return state_dict, card


def check_finite(state_dict: Mapping[str, Tensor], where: str) -> None:
    """Refuse a state dict with a NaN or infinite value in a floating-point tensor."""
    broken = [key for key, value in state_dict.items()
              if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if broken:
        raise CheckpointError(f"{where} holds NaN or infinite weights in {len(broken)} tensor(s) ({broken[0]}"
                              f"{', ...' if len(broken) > 1 else ''}); a model built from it can only give "
                              "garbage: re-export or re-download it (load_checkpoint(..., allow_non_finite=True) "
                              "reads it anyway)")


def read_checkpoint(source: str | Path, progress: bool = True) -> dict[str, Tensor]:
    """Read a checkpoint from a path, URL, hub name or zoo name and rename its keys to this library's."""
    return load_checkpoint(source, progress)[0]


def checkpoint_num_classes(state_dict: Mapping[str, Tensor]) -> int | None:
    """The class count of a (davit-format) state dict's classifier, None when it has none."""
    weight = state_dict.get("head.fc.weight")
    return None if weight is None else int(weight.shape[0])


def load_into(model: nn.Module, state_dict: Mapping[str, Tensor], reset_head: bool = False) -> None:
    """Copy a davit-format state dict into ``model``; every key must match in name and shape.

    With ``reset_head`` the checkpoint's classifier (``head.fc``) is skipped and the model's
    freshly initialised one kept, for fine-tuning on another class count.
    """
    expected = model.state_dict()
    state_dict = dict(state_dict)
    if reset_head:
        for key in HEAD_KEYS:
            state_dict.pop(key, None)
    missing = [k for k in expected if k not in state_dict and not (reset_head and k in HEAD_KEYS)]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or mis_shaped:
        problems = []
        for label, items in (("missing", missing), ("unexpected", unexpected),
                             ("mis-shaped", mis_shaped)):
            if items:
                shown = "; ".join(items[:8]) + (f"; ... ({len(items) - 8} more)" if len(items) > 8 else "")
                problems.append(f"{len(items)} {label} key(s): {shown}")
        arch = getattr(model, "arch", None)
        model_desc = f"embed_dims={list(arch.embed_dims)}, depths={list(arch.depths)}" if arch else "the model"
        raise CheckpointMismatchError(
            f"the checkpoint does not fit the model ({model_desc}); it looks like "
            f"{_guess(state_dict) or 'another network'}. " + " | ".join(problems)
            + ". Pick the model that matches the checkpoint.")
    model.load_state_dict(state_dict, strict=not reset_head)


def _guess(state_dict: Mapping[str, Tensor]) -> str | None:
    """The architecture a davit-format state dict looks like, with or without the ``backbone.``
    prefix (a bare backbone's weights)."""
    if not any(key.startswith("backbone.") for key in state_dict):
        state_dict = {f"backbone.{key}": value for key, value in state_dict.items()}
    return guess_arch(state_dict)


def load_pretrained(model: nn.Module, source: str | Path | Mapping[str, Tensor],
                    progress: bool = True) -> nn.Module:
    """Load ``source`` (path, URL or hub name in any format, or a davit-format state dict) into a
    DaViT classifier or backbone (see :func:`load_backbone`).

    A classifier whose class count differs from the checkpoint's keeps its own freshly initialised
    ``head.fc`` (logged), the usual set-up for fine-tuning.
    """
    state_dict = source if isinstance(source, Mapping) else read_checkpoint(source, progress=progress)
    if not any(k.startswith("head.") for k in model.state_dict()):
        load_backbone(model, state_dict)
        return model
    ckpt_classes = checkpoint_num_classes(state_dict)
    reset_head = ckpt_classes is not None and ckpt_classes != model.num_classes
    if reset_head:
        logger.warning("checkpoint has %d classes but the model has %d: the classifier layer "
                       "head.fc is re-initialised (fine-tuning set-up)", ckpt_classes, model.num_classes)
    load_into(model, state_dict, reset_head=reset_head)
    return model


def load_backbone(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a davit-format state dict into a bare backbone (:class:`~davit.model.DaViT`, a dense
    backbone), so that classification, Florence-2 and detection weights all start one.

    What a backbone has no place for (the classifier, Florence-2's projector, the output norms of
    stages it does not output) is dropped, and the output norms that the weights lack (every
    classifier's) start as identity LayerNorms (ones and zeros), each reported in one log line;
    anything else missing or mis-shaped raises :class:`CheckpointMismatchError`.
    """
    expected = model.state_dict()
    weights = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    dropped = [k for k in state_dict if not k.startswith("backbone.")]
    dropped += [f"backbone.{k}" for k in weights if _OUT_NORM.match(k) and k not in expected]
    weights = {k: v for k, v in weights.items() if k in expected or not _OUT_NORM.match(k)}
    fresh = [k for k in expected if _OUT_NORM.match(k) and k not in weights]
    for key in fresh:
        weights[key] = (torch.ones_like if key.endswith(".weight") else torch.zeros_like)(expected[key])
    load_into(model, weights)
    if dropped:
        logger.info("loading a backbone: dropped %d tensor(s) it has no place for (classifier, projector, "
                    "norms of stages it does not output): %s", len(dropped), ", ".join(dropped))
    if fresh:
        logger.info("loading a backbone: the weights have no output norms; initialised %s as identity "
                    "LayerNorms (ones and zeros)", ", ".join(sorted({k.rsplit(".", 1)[0] for k in fresh})))
