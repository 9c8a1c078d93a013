"""The model and the evaluator a config asks for, checked before anything is built.

Every check names the config section it reads (``section="val_evaluator"``), so the same
validator serves ``tools/test.py`` and validation during training with messages that point at
the right key. Data specs are in :mod:`.data`, optimiser and runtime specs in :mod:`.training`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..model import SEMANTICS, DaViT, DaViTClassifier
from ..model.archs import DaViTArch, resolve_arch

# Backbone options of the config that DaViT takes (besides ``type`` and ``arch``).
BACKBONE_OPTIONS = sorted(set(inspect.signature(DaViT.__init__).parameters) - {"self", "arch", "semantics"})


@dataclass(frozen=True)
class ModelSpec:
    """What the config's ``model`` dict asks for, checked before anything is built."""

    arch: DaViTArch
    num_classes: int
    semantics: str
    backbone_options: dict


@dataclass(frozen=True)
class EvaluatorSpec:
    """The config's ``Accuracy`` evaluator: which top-k to report and the score threshold."""

    topk: tuple[int, ...]
    thr: float | None


def model_spec(model_cfg: dict, semantics: str | None = None) -> ModelSpec:
    """Check the config's ``model`` dict (an ImageClassifier of a DaViT backbone, global average
    pooling and a LinearClsHead); ``semantics`` overrides its ``semantics`` key."""
    _expect_type(model_cfg, "ImageClassifier", "model")
    backbone = dict(model_cfg.get("backbone") or {})
    _expect_type(backbone, "DaViT", "model.backbone")
    _expect_type(model_cfg.get("neck") or {}, "GlobalAveragePooling", "model.neck")
    head = model_cfg.get("head") or {}
    _expect_type(head, "LinearClsHead", "model.head")
    try:
        arch = resolve_arch(backbone.get("arch", "tiny"))
    except (ValueError, TypeError) as error:
        raise ConfigError(f"model.backbone.arch: {error}") from None
    options = {k: v for k, v in backbone.items() if k not in ("type", "arch")}
    unknown = sorted(set(options) - set(BACKBONE_OPTIONS))
    if unknown:
        raise ConfigError(f"model.backbone has options DaViT does not take: {unknown}; "
                          f"supported: {BACKBONE_OPTIONS}")
    num_classes = head.get("num_classes")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"model.head.num_classes must be a positive integer, got {num_classes!r}")
    in_channels = head.get("in_channels", arch.embed_dims[-1])
    if in_channels != arch.embed_dims[-1]:
        raise ConfigError(f"model.head.in_channels is {in_channels} but the backbone's last stage "
                          f"has {arch.embed_dims[-1]} channels; set "
                          f"model.head.in_channels={arch.embed_dims[-1]}")
    chosen = semantics or model_cfg.get("semantics", "official")
    if chosen not in SEMANTICS:
        raise ConfigError(f"model.semantics must be one of {list(SEMANTICS)}, got {chosen!r}")
    return ModelSpec(arch, num_classes, chosen, options)


def _expect_type(cfg: dict, expected: str, where: str) -> None:
    found = cfg.get("type", expected)
    if found != expected:
        raise ConfigError(f"{where}.type is {found!r}; this evaluator supports {expected!r} only")


def build_model(spec: ModelSpec) -> DaViTClassifier:
    """The (randomly initialised) classifier ``spec`` describes."""
    return DaViTClassifier(spec.arch, num_classes=spec.num_classes, semantics=spec.semantics,
                           **spec.backbone_options)


def evaluator_spec(cfg: dict, num_classes: int, section: str = "test_evaluator") -> EvaluatorSpec:
    """The config's ``test_evaluator``: one mmpretrain ``Accuracy`` with ``topk`` and ``thrs``
    (mmpretrain's top-1 and top-5 when the config has none)."""
    return accuracy_spec(cfg.get(section, {"type": "Accuracy", "topk": (1, 5)}), num_classes, section)


def val_evaluator_spec(cfg: dict, num_classes: int) -> EvaluatorSpec:
    """The config's ``val_evaluator`` (top-1 when it has none); top-k above the class count is
    dropped, so a recipe's top-5 works on a 3-class fine-tuning set."""
    evaluator = cfg.get("val_evaluator") or {"type": "Accuracy", "topk": (1,)}
    if isinstance(evaluator, dict):
        topk = evaluator.get("topk", (1,))
        topk = (topk,) if isinstance(topk, int) else tuple(topk)
        evaluator = {**evaluator, "topk": tuple(k for k in topk if k <= num_classes) or (1,)}
    return accuracy_spec(evaluator, num_classes, "val_evaluator")


def accuracy_spec(evaluator: Any, num_classes: int, section: str) -> EvaluatorSpec:
    """Check one mmpretrain ``Accuracy`` evaluator (or a list holding one) of ``section``."""
    if isinstance(evaluator, (list, tuple)):
        if len(evaluator) != 1:
            raise ConfigError(f"{section} lists several metrics; this evaluator computes one "
                              "Accuracy")
        evaluator = evaluator[0]
    if not isinstance(evaluator, dict) or evaluator.get("type") != "Accuracy":
        found = evaluator.get("type") if isinstance(evaluator, dict) else evaluator
        raise ConfigError(f"{section} type {found!r} is not supported; use "
                          "dict(type='Accuracy', topk=(1, 5))")
    unknown = sorted(set(evaluator) - {"type", "topk", "thrs"})
    if unknown:
        raise ConfigError(f"{section} options {unknown} are not supported; remove them")
    topk = evaluator.get("topk", (1,))
    topk = (topk,) if isinstance(topk, int) else tuple(topk)
    if not topk or any(not isinstance(k, int) or not 1 <= k <= num_classes for k in topk):
        raise ConfigError(f"{section}.topk {list(topk)} must hold integers between 1 and "
                          f"the model's {num_classes} classes")
    thrs = evaluator.get("thrs", 0.0)
    if isinstance(thrs, (list, tuple)):
        if len(thrs) != 1:
            raise ConfigError(f"{section}.thrs with several thresholds is not supported; "
                              "give one number or None")
        thrs = thrs[0]
    return EvaluatorSpec(topk, None if thrs is None else float(thrs))
