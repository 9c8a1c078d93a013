"""One resolver for the ways a user names a model, its weights or a device.

A *model* is a zoo name (``davit-tiny_3rdparty_in1k``), an architecture name (``tiny``), a dict
or JSON object of architecture fields, or a :class:`~davit.model.DaViTArch`. A *weights source*
is a zoo name with published weights, a file path, an http(s) URL or an ``hf-hub:`` name. Every
entry point (the Python API, ``davit`` subcommands, ``tools/*.py``, configs' ``load_from``) goes
through these functions, so a name means the same thing everywhere.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint.download import download_checkpoint
from .checkpoint.hub import download_hf_checkpoint, is_hf_hub_name
from .errors import CheckpointNotFoundError, DavitError, DeviceError, InvalidArgumentError
from .model.archs import ARCHS, DaViTArch, resolve_arch
from .zoo import MODELS, get_model_info

_REMOTE = re.compile(r"^(https?://|hf-hub:)")


@dataclass(frozen=True)
class ModelRef:
    """What a model name stands for: its architecture, class count and published weights."""

    arch: DaViTArch
    num_classes: int = 1000
    weights: str | None = None


def resolve_model(model: str | dict[str, Any] | DaViTArch) -> ModelRef:
    """The :class:`ModelRef` of a zoo name, an architecture name, a JSON object or a dict of
    architecture fields, or a :class:`DaViTArch`."""
    if not isinstance(model, str):
        return ModelRef(_checked_arch(model))
    text = model.strip()
    if text.startswith("{"):
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidArgumentError(f"the model {model!r} is not valid JSON: {error}") from None
        return ModelRef(_checked_arch(fields))
    if text in ARCHS:
        return ModelRef(ARCHS[text])
    info = get_model_info(text)
    return ModelRef(ARCHS[info.arch], info.num_classes, info.weights)


def _checked_arch(spec: Any) -> DaViTArch:
    """``resolve_arch(spec)``, its complaints about the user's fields raised as
    :class:`InvalidArgumentError` so that the command line reports them in one line."""
    try:
        return resolve_arch(spec)
    except DavitError:
        raise
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(f"invalid architecture: {error}") from error


def resolve_weights(source: str | Path) -> str:
    """Where the weights named by ``source`` live: a zoo name's published weights, or ``source``
    itself when it is an existing file, an http(s) URL or an ``hf-hub:`` name."""
    text = str(source)
    if text in MODELS or text in ARCHS:  # a model's name wins over a file of that name
        weights = MODELS[text].weights if text in MODELS else None
        if weights is None:
            raise InvalidArgumentError(
                f"{text!r} has no published weights; give a checkpoint file, URL or hf-hub: name, "
                "or a name from `davit list --pretrained`")
        return weights
    if _REMOTE.match(text) or Path(text).expanduser().is_file():
        return text
    raise CheckpointNotFoundError(
        f"checkpoint {text!r} does not exist: it is neither a file, an http(s) URL, an hf-hub: "
        "name nor a model name with published weights (`davit list --pretrained`)")


def fetch_weights(source: str | Path, progress: bool = True) -> Path:
    """A local file holding the weights named by ``source`` (see :func:`resolve_weights`): URLs
    are downloaded into the torch hub cache, ``hf-hub:`` names into the Hugging Face cache."""
    text = resolve_weights(source)
    if is_hf_hub_name(text):
        return download_hf_checkpoint(text)
    if _REMOTE.match(text):
        return download_checkpoint(text, progress=progress)
    return Path(text).expanduser()


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device`, checked to exist here, so that asking for a GPU on a
    machine without one fails with a message instead of deep inside a forward pass."""
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise InvalidArgumentError(f"unknown device {str(device)!r}: {error}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"CUDA is not available on this machine; use --device cpu instead of "
                              f"{str(device)!r}")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise DeviceError(f"there is no {parsed}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    return parsed
