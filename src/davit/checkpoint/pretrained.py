"""The Hugging Face folder convention: ``config.json`` + ``model.safetensors``.

A classifier that timm also has (``davit_tiny`` ... ``davit_giant``: DaViT's standard layout and
the official semantics) is written in timm's hub layout, so that
``timm.create_model("local-dir:FOLDER", pretrained=True)`` or ``hf-hub:user/repo`` loads it with
the same logits: ``config.json`` holds timm's ``architecture``, ``num_classes``,
``num_features``, ``label_names`` and ``pretrained_cfg``, the weights use timm's key names, and
this library's model card rides along as the ``davit`` entry. Any other architecture (a custom
record, mmpretrain semantics) is written in this library's own layout: ``config.json`` with the
``davit`` entry only and the weights in ``davit`` key names, which timm cannot load.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from ..errors import CheckpointError, InvalidArgumentError
from ..model.archs import ARCHS
from ..model.base import DaViTModel
from ..model.classifier import DaViTClassifier
from ..model.florence2 import Florence2Encoder
from .card import ModelCard, Preprocessing, card_of, default_card
from .formats import from_davit
from .io import replacing, save_state_dict_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TIMM_ARCHS = {f"davit_{name}": name for name in ("tiny", "small", "base", "large", "huge", "giant")}
_CARD_ENTRY = "davit"


def timm_architecture(card: ModelCard) -> str | None:
    """timm's name for the model a card describes (``davit_tiny``), None when timm has none."""
    if card.semantics != "official":
        return None
    arch = card.architecture
    return next((timm for timm, ours in TIMM_ARCHS.items() if ARCHS[ours] == arch), None)


def pretrained_config(card: ModelCard, num_features: int) -> dict[str, Any]:
    """The ``config.json`` of a model with ``card``: timm's fields where timm has the model."""
    config: dict[str, Any] = {}
    timm_name = timm_architecture(card)
    if timm_name is not None:
        pre = card.preprocessing
        config = {
            "architecture": timm_name, "num_classes": card.num_classes, "num_features": num_features,
            "pretrained_cfg": {
                "input_size": [3, pre.crop_size, pre.crop_size], "interpolation": pre.interpolation,
                "mean": [value / 255 for value in pre.mean], "std": [value / 255 for value in pre.std],
                "crop_pct": pre.crop_size / pre.resize_edge, "crop_mode": "center"}}
        if card.class_names is not None:
            config["label_names"] = list(card.class_names)
    return {**config, _CARD_ENTRY: card.to_dict()}


def save_pretrained(model: DaViTModel, folder: str | Path) -> Path:
    """Write ``model`` (a :class:`~davit.model.DaViTClassifier` or a
    :class:`~davit.model.Florence2Encoder`, with or without projector and head) to ``folder`` as ``config.json``
    and ``model.safetensors`` (see the module docstring for the two layouts); returns the folder.
    Each file is written atomically and only once both are ready in memory."""
    if not isinstance(model, (DaViTClassifier, Florence2Encoder)):
        raise InvalidArgumentError(f"save_pretrained takes a model davit.get_model builds (a DaViT "
                                   f"classifier or a Florence-2 encoder), "
                                   f"not {type(model).__name__}")
    card = card_of(model)
    config = pretrained_config(card, model.num_features)
    state_dict = model.state_dict()
    if timm_architecture(card) is not None:
        state_dict = from_davit(state_dict, "timm")
    text = json.dumps(config, indent=2)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict_file(state_dict, folder / WEIGHTS_FILE, metadata={"format": "pt", **card.to_metadata()})
    with replacing(folder / CONFIG_FILE) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return folder


def read_pretrained_config(path: str | Path) -> ModelCard:
    """The card of a ``config.json``: this library's ``davit`` entry, or else what timm's fields
    say (timm's hub models, ``hf-hub:timm/davit_tiny.msft_in1k``)."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not a readable JSON file: {error}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds a {type(config).__name__}, not a JSON object")
    if _CARD_ENTRY in config:
        return ModelCard.from_dict(config[_CARD_ENTRY], str(path))
    name = config.get("architecture")
    if name not in TIMM_ARCHS:
        raise CheckpointError(f"{path} describes neither a davit model (no {_CARD_ENTRY!r} entry) "
                              f"nor one of timm's {sorted(TIMM_ARCHS)} (architecture={name!r})")
    pre = config.get("pretrained_cfg") or {}
    try:
        card = default_card(TIMM_ARCHS[name], int(config.get("num_classes", pre.get("num_classes", 1000))))
        names = config.get("label_names") or pre.get("label_names")
        return replace(card, class_names=tuple(names) if names else card.class_names,
                       preprocessing=_timm_preprocessing(pre))
    except (InvalidArgumentError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: {error}") from None


def _timm_preprocessing(pre: dict[str, Any]) -> Preprocessing:
    """Preprocessing from timm's ``pretrained_cfg`` (mean and std as 0-1 fractions; the resize
    edge from ``crop_pct`` as timm computes it)."""
    default = Preprocessing()
    if not pre:
        return default
    crop = int(pre.get("input_size", [3, default.crop_size])[-1])
    mean = pre.get("mean")
    std = pre.get("std")
    return Preprocessing(
        math.floor(crop / float(pre.get("crop_pct", crop / default.resize_edge)) + 1e-6), crop,
        str(pre.get("interpolation", default.interpolation)),
        tuple(value * 255 for value in mean) if mean else default.mean,
        tuple(value * 255 for value in std) if std else default.std)


def push_to_hub(model: DaViTModel, repo_id: str, *, private: bool | None = None,
                token: str | None = None, revision: str | None = None,
                commit_message: str = "Upload DaViT model") -> Any:
    """Write ``model`` as :func:`save_pretrained` does and upload the folder to the Hugging Face
    Hub repo ``repo_id`` (created when missing); returns huggingface_hub's commit info."""
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="davit-push-") as folder:
        save_pretrained(model, folder)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                 commit_message=commit_message)

