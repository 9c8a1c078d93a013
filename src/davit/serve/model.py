"""The model behind the server: loaded once, preprocessing from its card, run on a chosen runtime.

Classification runs on the backend (:func:`davit.exported.open_backend`: PyTorch, ONNX Runtime or
OpenVINO) and answers class probabilities exactly as :func:`davit.inference_model` computes them
(softmax of the float32 logits). Embeddings always run on the PyTorch model (the exported
runtimes hold the classifier only), with :mod:`davit.engine.embed`'s definition of an embedding.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..api import get_model
from ..checkpoint.card import Preprocessing
from ..data.calibration import calibration_and_holdout
from ..data.transforms import TestTransform
from ..dtypes import autocast_dtype
from ..engine.embed import embedding_function
from ..errors import InvalidArgumentError
from ..exported import ExportedModel, exported_source, open_backend, open_checked_int8, open_exported
from ..runtime import Backend

logger = logging.getLogger("davit")


@dataclass
class ServedModel:
    """A loaded model with what the server needs to answer for it."""

    name: str
    model: nn.Module
    classifier: Backend | None  # None: the model does not classify (a Florence-2 tower without head)
    backend: str
    dtype: str
    transform: TestTransform
    input_size: tuple[int, int]

    @property
    def class_names(self) -> list[str] | None:
        return getattr(self.model, "class_names", None)

    @property
    def has_tokens(self) -> bool:
        """Whether the model gives token embeddings (a Florence-2 projector, or its tokens' export)."""
        if isinstance(self.model, ExportedModel):
            return self.model.output == "image_tokens"
        return getattr(self.model, "projector", None) is not None

    @property
    def embeds(self) -> bool:
        """Whether the model gives embeddings at all (an exported classifier's logits do not)."""
        return not isinstance(self.model, ExportedModel) or self.has_tokens

    def probabilities(self, images: Tensor) -> np.ndarray:
        """Class probabilities (N, classes) of a preprocessed batch."""
        if self.classifier is None:
            raise RuntimeError("this model has no classifier")
        return self.classifier(images).float().softmax(dim=-1).numpy()

    def embeddings(self, images: Tensor, pooled: bool) -> np.ndarray:
        """Pooled (N, D) or token (N, T, D) embeddings of a preprocessed batch."""
        embed = embedding_function(self.model, pooled)
        amp = autocast_dtype(self.dtype, torch.device("cpu"))
        on_torch = amp is not None and not isinstance(self.model, ExportedModel)  # a runtime has its own dtype
        with torch.inference_mode(), torch.autocast("cpu", amp or torch.float32, enabled=on_torch):
            return embed(images).float().numpy()

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models`` says about the model."""
        card = getattr(self.model, "card", None)
        arch = getattr(self.model, "arch", None)
        return {"id": self.name,
                "tasks": (["predict"] if self.classifier is not None else []) + (["embed"] if self.embeds else []),
                "architecture": arch.to_dict() if arch is not None else None,
                "num_classes": getattr(self.model, "num_classes", 0),
                "class_names": self.class_names,
                "preprocessing": card.preprocessing.to_dict() if card is not None else None,
                "input_size": list(self.input_size),
                "backend": self.backend, "dtype": self.dtype, "token_embeddings": self.has_tokens}


@dataclass(frozen=True)
class Int8Serving:
    """``davit serve --int8``: calibration images (a folder or a wds: / hf: source), held-out ones
    (None: the calibration images), the least top-1 agreement with fp32, and whether an int8
    model slower than the float one is served anyway."""

    calibration: str
    holdout: str | None = None
    min_agreement: float = 0.99
    allow_slower: bool = False


def load_served_model(source: str, checkpoint: str | None = None, random_weights: bool = False,
                      backend: str = "torch", dtype: str = "fp32", threads: int | None = None,
                      int8: Int8Serving | None = None, max_batch_size: int = 16,
                      compiled: bool = False) -> ServedModel:
    """Build the model that ``source`` names (anything :func:`davit.get_model` takes) with its
    own weights, ``checkpoint``'s, or random ones, and open its classifier on ``backend`` (with
    ``int8``, quantised, where that agrees with fp32 and is faster here:
    :func:`davit.exported.open_checked_int8`, compiled for one image and ``max_batch_size``; with
    ``compiled``, as inductor's graph with frozen weights for the same sizes); or open the file
    ``davit export`` wrote that ``source`` (or ``checkpoint``) names on its runtime."""
    if compiled and int8 is not None:
        raise InvalidArgumentError("an --int8 model is compiled already; drop --compile")
    exported = exported_source(source, checkpoint, random_weights)
    if exported is not None and compiled:
        raise InvalidArgumentError("--compile compiles a PyTorch model; serve the model this file was exported "
                                   "from with --compile, or the file without it")
    if exported is not None:
        if int8 is not None:
            raise InvalidArgumentError("--int8 quantises a PyTorch model; serve the model it was exported from, "
                                       "or export it with davit export --int8")
        return _served_export(open_exported(exported, backend, dtype, threads), dtype)
    pretrained: bool | str = checkpoint if checkpoint else not random_weights
    model = get_model(source, pretrained=pretrained, device="cpu")
    card = getattr(model, "card", None)
    preprocessing = card.preprocessing if card is not None else Preprocessing()
    size = preprocessing.exact_size or (preprocessing.crop_size, preprocessing.crop_size)
    input_size = (int(size[0]), int(size[1]))
    classifies = getattr(model, "head", None) is not None
    classifier: Backend | None = None
    if classifies and int8 is not None:
        classifier = _int8_classifier(model, backend, dtype, threads, int8, preprocessing.transform(), max_batch_size)
    elif classifies:
        classifier = open_backend(model, backend, dtype=dtype, input_size=input_size, threads=threads,
                                  compiled=compiled, batch_sizes=(1, max_batch_size))
    elif int8 is not None:
        raise InvalidArgumentError("--int8 quantises a classifier; this model has no classification head")
    elif compiled:
        raise InvalidArgumentError("--compile compiles the classifier; this model has no classification head, "
                                   "and its embeddings run eager: drop --compile")
    # torch-int8, openvino-int8, torch-bf16-compiled
    served_on = classifier.name if classifier is not None and (int8 is not None or compiled) else backend
    return ServedModel(public_name(source, card), model, classifier, served_on, dtype, preprocessing.transform(),
                       input_size)


def _int8_classifier(model: nn.Module, backend: str, dtype: str, threads: int | None, int8: Int8Serving,
                     transform: TestTransform, max_batch_size: int) -> Backend:
    calibration, holdout = calibration_and_holdout(int8.calibration, int8.holdout, transform)
    classifier, report = open_checked_int8(model, backend, calibration, holdout, min_agreement=int8.min_agreement,
                                           allow_slower=int8.allow_slower, dtype=dtype, threads=threads,
                                           batch_size=max_batch_size, smaller_batches=(1,))
    logger.info("%s", report.summary())
    return classifier


def _served_export(model: ExportedModel, dtype: str) -> ServedModel:
    """An exported file: it classifies when it gives logits, embeds when it gives image tokens."""
    pre = model.card.preprocessing if model.card is not None else Preprocessing()
    size = pre.exact_size or (pre.crop_size, pre.crop_size)
    return ServedModel(public_name(str(model.path), model.card), model, model.backend if model.classifies else None,
                       model.runtime, dtype, pre.transform(), (int(size[0]), int(size[1])))


def public_name(source: str, card: Any = None) -> str:
    """The name the server answers with for ``source``: the card's name when it has one, a zoo
    name (or architecture) as given, else the base name of the checkpoint file or folder, so that
    no client learns the server's file paths."""
    named = getattr(card, "name", None)
    if isinstance(named, str) and named.strip():
        return named.strip()
    if source.lstrip().startswith("{"):  # an architecture record, not a path
        return source
    if os.sep in source or (os.altsep is not None and os.altsep in source) or _exists(source):
        return Path(source.rstrip("/\\")).name or "model"
    return source


def _exists(source: str) -> bool:
    try:
        return Path(source).exists()
    except (OSError, ValueError):
        return False
