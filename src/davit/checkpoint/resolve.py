"""One resolver for the ways a user names a model, its weights or a device.

A *model* is a zoo name (``davit-tiny_3rdparty_in1k``), an architecture name (``tiny``), a dict
or JSON object of architecture fields, a :class:`~davit.model.DaViTArch`, an mmpretrain-style
config file (``.py``: the ``model`` section and the test pipeline), or a *weights source* that
carries its own description: a checkpoint file, an http(s) URL, a ``save_pretrained`` folder or an
``hf-hub:`` name. A weights source is also any zoo name with published weights, and a config whose
``load_from`` names one. Every entry point (the Python API, ``davit`` subcommands, ``tools/*.py``,
configs' ``load_from``) goes through these functions, so a name means the same thing everywhere.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import load_config
from ..config.specs import model_spec
from ..errors import CheckpointError, CheckpointNotFoundError, DavitError, DeviceError, InvalidArgumentError
from ..model.archs import ARCHS, DaViTArch, arch_name, resolve_arch
from ..zoo import MODELS, ModelInfo, get_model_info
from .card import ModelCard, card_from_metadata, config_card, default_card, guess_arch, guessed_card
from .download import download_checkpoint
from .formats import to_davit
from .hub import WEIGHT_FILES, download_hf_checkpoint, download_hf_file, is_hf_hub_name
from .io import load_state_dict_file, read_raw_metadata
from .pretrained import CONFIG_FILE, read_pretrained_config

logger = logging.getLogger("davit")

ModelSource = str | Path | dict | DaViTArch  # what resolve_model takes
_REMOTE = re.compile(r"^(https?://|hf-hub:)")
CONFIG_SUFFIXES = (".py", ".yaml", ".yml")  # a .json is an architecture record; tools/*.py also read .json configs
_FILE_LIKE = (*CONFIG_SUFFIXES, ".pth", ".pt", ".bin", ".safetensors", ".json")
_EXPORTED = (".onnx", ".xml", ".pt2")  # what `davit export` writes: runtimes run them, not torch
SOURCE_KINDS = ("architecture", "zoo", "hf-hub", "config", "url", "file", "folder")


@dataclass(frozen=True)
class ModelRef:
    """What a model name stands for: its architecture, class count and weights, and, when the
    source describes itself (zoo entries, checkpoints, folders, configs), its card and the
    backbone options of a config."""

    arch: DaViTArch
    num_classes: int = 1000
    weights: str | None = None
    card: ModelCard | None = None
    backbone_options: dict[str, Any] = field(default_factory=dict)
    # Named by its weights (a checkpoint file, URL, folder or hf-hub: name), not by a name or config.
    is_weights: bool = False
    # How the source was read: one of SOURCE_KINDS (logged, so that `davit -v` says which it took).
    kind: str = "architecture"
    # The weights' tensors (this library's keys) when guessing the card meant reading them all, so
    # that loading does not read (and report on) the file a second time.
    state_dict: dict[str, torch.Tensor] | None = field(default=None, compare=False, repr=False)


def resolve_model(model: str | Path | dict[str, Any] | DaViTArch, progress: bool = True) -> ModelRef:
    """The :class:`ModelRef` of any model named as the module docstring lists (``ref.kind`` says
    which reading was taken). Weights sources are downloaded (into the caches) to read their card."""
    ref = _resolve(model, progress)
    logger.debug("model %s read as %s (%s)", _shown(model), ref.kind, arch_name(ref.arch))
    return ref


def _resolve(model: str | Path | dict[str, Any] | DaViTArch, progress: bool) -> ModelRef:
    if not isinstance(model, (str, Path)):
        return ModelRef(_checked_arch(model))
    text = str(model).strip()
    if text.startswith("{"):
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidArgumentError(f"the model {text!r} is not valid JSON: {error}") from None
        return ModelRef(_checked_arch(fields))
    if text in ARCHS:
        return ModelRef(ARCHS[text])
    if text in MODELS:
        return _zoo_ref(MODELS[text])
    if is_hf_hub_name(text):
        config = download_hf_file(text, (CONFIG_FILE,), missing_ok=True)
        return _described(text, _config_card(config), progress, "hf-hub")
    path = Path(text).expanduser()
    _refuse_exported(path)
    if path.is_file() and path.suffix.lower() in CONFIG_SUFFIXES:
        return _config_ref(path)
    if _REMOTE.match(text) or path.is_file():
        return _described(text, None, progress, "url" if _REMOTE.match(text) else "file")
    if path.is_dir():
        config = path / CONFIG_FILE
        return _described(text, _config_card(config if config.is_file() else None), progress, "folder")
    if path.suffix in _FILE_LIKE or "/" in text:
        raise CheckpointNotFoundError(f"{text!r} does not exist: it is neither a file nor a folder")
    return _zoo_ref(get_model_info(text))  # an unknown name raises, suggesting close ones


def _shown(model: object) -> str:
    """``model`` as a log line names it (an architecture record by its class)."""
    return repr(str(model)) if isinstance(model, (str, Path)) else type(model).__name__


def _refuse_exported(path: Path) -> None:
    """Refuse a file ``davit export`` wrote, which is no checkpoint, naming what to do instead."""
    if path.suffix.lower() in _EXPORTED:
        raise InvalidArgumentError(
            f"{path} is an exported model (davit export's output), not PyTorch weights: run it with "
            "davit predict/serve/embed --model, tools/test.py, inference_model or davit.exported.open_exported, "
            "or pass the model it was exported from")


def _config_card(config: Path | None) -> ModelCard | None:
    """The card of a folder's or Hub repo's ``config.json``; None without one, or for Florence-2's
    own (transformers') config, whose weights then describe themselves."""
    if config is None:
        return None
    try:
        florence2 = json.loads(config.read_text(encoding="utf-8")).get("model_type") == "florence2"
    except (OSError, ValueError, AttributeError):
        florence2 = False  # read_pretrained_config says what is wrong with it
    return None if florence2 else read_pretrained_config(config)


def _zoo_ref(info: ModelInfo) -> ModelRef:
    return ModelRef(ARCHS[info.arch], info.num_classes, info.weights,
                    default_card(info.arch, info.num_classes), kind="zoo")


def _checked_arch(spec: Any) -> DaViTArch:
    """``resolve_arch(spec)``, its complaints about the user's fields raised as
    :class:`InvalidArgumentError` so that the command line reports them in one line."""
    try:
        return resolve_arch(spec)
    except DavitError:
        raise
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(f"invalid architecture: {error}") from error


def _described(source: str, card: ModelCard | None, progress: bool, kind: str) -> ModelRef:
    """The ref of a weights source: its card (``card``, else the one in the weights' metadata,
    else one guessed from the tensors' shapes)."""
    state_dict = None
    if card is None:
        path = fetch_weights(source, progress=progress)
        card = card_from_metadata(read_raw_metadata(path), str(path))
        if card is None:
            state_dict = to_davit(load_state_dict_file(path))
            card = _guessed_card(path, state_dict)
    return ModelRef(card.architecture, card.num_classes, source, card, is_weights=True, kind=kind,
                    state_dict=state_dict)


def _guessed_card(path: Path, state_dict: dict[str, torch.Tensor]) -> ModelCard:
    """The default card of weights without one (published checkpoints, older versions' files),
    for the standard architecture their tensors have."""
    card = guessed_card(state_dict)
    if card is None:
        raise CheckpointError(
            f"{path} carries no model card and its tensors ({guess_arch(state_dict) or 'no DaViT stages'}) "
            "are not one of the standard architectures; name the architecture as the model and give "
            "this file as its weights")
    return card


def _config_ref(path: Path) -> ModelRef:
    """The ref of an mmpretrain-style config: the model from its ``model`` section, the
    preprocessing from its test (else validation) pipeline, the weights from ``load_from``."""
    cfg = load_config(path)
    spec = model_spec(cfg.get("model") or {})
    card = config_card(spec, cfg)
    weights = cfg.get("load_from")
    return ModelRef(spec.arch, spec.num_classes, str(weights) if weights else None, card,
                    dict(spec.backbone_options), kind="config")


def pretrained_source(ref: ModelRef, model: ModelSource,
                      pretrained: bool | str | Path | None) -> str | Path | None:
    """The checkpoint a ``pretrained=`` argument asks for (None: random weights): True means the
    model's own weights; the default (None) means them when ``model`` was named by its weights
    (a file, URL, folder or ``hf-hub:`` name) and random weights for names and configs."""
    if pretrained is None:
        pretrained = ref.is_weights
    if pretrained is True:
        if ref.weights is not None:
            return ref.weights
        if ref.card is None and not (isinstance(model, str) and model in ARCHS):
            raise InvalidArgumentError("a custom architecture has no published weights; give a "
                                       "checkpoint (path, URL, folder or hf-hub: name) for it")
        return resolve_weights(str(model))  # says why the name has none
    if pretrained is False or pretrained is None:
        return None
    if isinstance(pretrained, (str, Path)):
        return pretrained
    raise InvalidArgumentError(f"pretrained must be a bool, a path, a URL or an hf-hub: name, "
                               f"not {type(pretrained).__name__}")


def model_and_weights(model: str | None, checkpoint: str | None, random_weights: bool,
                      default: str) -> tuple[str, bool | str]:
    """The model source and ``pretrained=`` argument that a command line's ``--model``,
    ``--checkpoint`` and ``--random-weights`` ask for: without ``--model`` a checkpoint describes
    itself through its card, else ``default`` is used."""
    if random_weights and checkpoint:
        raise InvalidArgumentError("--random-weights and --checkpoint exclude each other; pass one")
    if random_weights:
        return model or default, False
    if model is None:
        return checkpoint or default, True
    return model, checkpoint or True


def resolve_weights(source: str | Path) -> str:
    """Where the weights named by ``source`` live: a zoo name's published weights, the weights
    file of a ``save_pretrained`` folder, a config's ``load_from``, or ``source`` itself when it
    is an existing file, an http(s) URL or an ``hf-hub:`` name."""
    text = str(source)
    if text in MODELS or text in ARCHS:  # a model's name wins over a file of that name
        weights = MODELS[text].weights if text in MODELS else None
        if weights is None:
            raise InvalidArgumentError(
                f"{text!r} has no published weights; give a checkpoint file, folder, URL or "
                "hf-hub: name, or a name from `davit list --pretrained`")
        return weights
    path = Path(text).expanduser()
    _refuse_exported(path)
    if path.is_file() and path.suffix.lower() in CONFIG_SUFFIXES:
        weights = load_config(path).get("load_from")
        if not weights:
            raise InvalidArgumentError(f"the config {text} has no load_from, so it names no "
                                       "weights; give a checkpoint as well")
        return resolve_weights(str(weights))
    if path.is_dir():
        found = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
        if found is None:
            raise CheckpointNotFoundError(f"the folder {text} holds no {' or '.join(WEIGHT_FILES)}")
        return str(found)
    if _REMOTE.match(text) or path.is_file():
        return text
    raise CheckpointNotFoundError(
        f"checkpoint {text!r} does not exist: it is neither a file, a folder, an http(s) URL, an "
        "hf-hub: name nor a model name with published weights (`davit list --pretrained`)")


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
