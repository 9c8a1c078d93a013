"""The model and the evaluator a config asks for, checked before anything is built.

Every check names the config section it reads (``section="val_evaluator"``), so the same
validator serves ``tools/test.py`` and validation during training with messages that point at
the right key. Data specs are in :mod:`.data`, optimiser and runtime specs in :mod:`.training`.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..model import SEMANTICS, DaViT
from ..model.archs import DaViTArch, resolve_arch
from .values import flag, integer, number, subsection

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
    """The config's ``Accuracy`` evaluator: which top-k to report and the score threshold.

    A top-k larger than the model's class count (top-5 of a 3-class model, always 100%) is left
    out of ``topk``, and ``note`` is the one line that says so (None when nothing was left out).
    """

    topk: tuple[int, ...]
    thr: float | None
    note: str | None = None


def model_spec(model_cfg: dict, semantics: str | None = None) -> ModelSpec:
    """Check the config's ``model`` dict (an ImageClassifier of a DaViT backbone, global average
    pooling and a LinearClsHead); ``semantics`` overrides its ``semantics`` key."""
    if not isinstance(model_cfg, dict):
        raise ConfigError(f"model must be a dict, got {model_cfg!r}")
    _expect_type(model_cfg, "ImageClassifier", "model")
    backbone = subsection(model_cfg, "backbone", "model")
    _expect_type(backbone, "DaViT", "model.backbone")
    _expect_type(subsection(model_cfg, "neck", "model"), "GlobalAveragePooling", "model.neck")
    head = subsection(model_cfg, "head", "model")
    _expect_type(head, "LinearClsHead", "model.head")
    try:
        arch = resolve_arch(backbone.get("arch", "tiny"))
    except (ValueError, TypeError) as error:
        raise ConfigError(f"model.backbone.arch: {error}") from None
    options = _backbone_options(backbone, len(arch.embed_dims))
    num_classes = integer(head, "num_classes", "model.head", minimum=1)
    in_channels = head.get("in_channels", arch.embed_dims[-1])
    if in_channels != arch.embed_dims[-1]:
        raise ConfigError(f"model.head.in_channels is {in_channels} but the backbone's last stage "
                          f"has {arch.embed_dims[-1]} channels; set "
                          f"model.head.in_channels={arch.embed_dims[-1]}")
    chosen = semantics or model_cfg.get("semantics", "official")
    if chosen not in SEMANTICS:
        raise ConfigError(f"model.semantics must be one of {list(SEMANTICS)}, got {chosen!r}")
    return ModelSpec(arch, num_classes, chosen, options)


def _backbone_options(backbone: dict, num_stages: int) -> dict:
    """The DaViT options of ``model.backbone`` (besides ``type`` and ``arch``), type-checked."""
    options = {k: v for k, v in backbone.items() if k not in ("type", "arch")}
    unknown = sorted(set(options) - set(BACKBONE_OPTIONS))
    if unknown:
        raise ConfigError(f"model.backbone has options DaViT does not take: {unknown}; "
                          f"supported: {BACKBONE_OPTIONS}")
    where = "model.backbone"
    if "in_chans" in options:
        integer(options, "in_chans", where, minimum=1)
    if "drop_path_rate" in options:
        number(options, "drop_path_rate", where, minimum=0.0, below=1.0)
    if "frozen_stages" in options:
        integer(options, "frozen_stages", where, minimum=-1, maximum=num_stages)
    if "grad_checkpointing" in options:
        flag(options, "grad_checkpointing", where, False)
    indices = options.get("out_indices", (3,))
    items = [indices] if isinstance(indices, int) else indices
    if not isinstance(items, (list, tuple)) or any(type(i) is not int for i in items):
        raise ConfigError(f"model.backbone.out_indices must be stage indices (0 to {num_stages - 1}), "
                          f"got {indices!r}")
    return options


def _expect_type(cfg: dict, expected: str, where: str) -> None:
    found = cfg.get("type", expected)
    if found != expected:
        raise ConfigError(f"{where}.type is {found!r}; this evaluator supports {expected!r} only")


def evaluator_spec(cfg: dict, num_classes: int, section: str = "test_evaluator") -> EvaluatorSpec:
    """The config's ``test_evaluator`` (or ``section``): one mmpretrain ``Accuracy`` with ``topk``
    and ``thrs`` (mmpretrain's top-1 and top-5 when the config has none)."""
    return accuracy_spec(cfg.get(section) or {"type": "Accuracy", "topk": (1, 5)}, num_classes, section)


def val_evaluator_spec(cfg: dict, num_classes: int) -> EvaluatorSpec:
    """The config's ``val_evaluator`` (top-1 when it has none)."""
    return accuracy_spec(cfg.get("val_evaluator") or {"type": "Accuracy", "topk": (1,)}, num_classes,
                         "val_evaluator")


def accuracy_spec(evaluator: Any, num_classes: int, section: str) -> EvaluatorSpec:
    """Check one mmpretrain ``Accuracy`` evaluator (or a list holding one) of ``section``; top-k
    values above ``num_classes`` are left out (see :class:`EvaluatorSpec`)."""
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
    given = evaluator.get("topk", (1,))
    topk = (given,) if isinstance(given, int) else given
    if not isinstance(topk, (list, tuple)) or not topk or any(type(k) is not int or k < 1 for k in topk):
        raise ConfigError(f"{section}.topk must be a positive integer or a list of them, e.g. (1, 5), "
                          f"got {given!r}")
    kept = tuple(k for k in topk if k <= num_classes) or (1,)
    thrs = evaluator.get("thrs", 0.0)
    if isinstance(thrs, (list, tuple)):
        if len(thrs) != 1:
            raise ConfigError(f"{section}.thrs with several thresholds is not supported; "
                              "give one number or None")
        thrs = thrs[0]
    thr = None if thrs is None else number({"thrs": thrs}, "thrs", section)
    return EvaluatorSpec(kept, thr, topk_note(section, topk, kept, num_classes))


def topk_note(section: str, topk: Sequence[int], kept: Sequence[int], num_classes: int) -> str | None:
    """The line that says which of ``topk`` were left out for a model of ``num_classes``."""
    dropped = [str(k) for k in topk if k not in kept]
    if not dropped:
        return None
    verb = "is" if len(dropped) == 1 else "are"
    reported = " and ".join(f"top-{k}" for k in kept)
    return (f"{section}.topk {', '.join(dropped)} {verb} more than the model's {num_classes} "
            f"classes: reporting {reported} only")
