"""The model card: what a set of weights is, stored with them so that every loader can rebuild and
feed the model as it was trained.

A card holds the architecture (a name of :data:`davit.model.ARCHS` or the full record), the class
count and names, the test-time preprocessing and the semantics. Checkpoints written by this
library carry it in their metadata as one JSON string under :data:`CARD_KEY` (``.safetensors``
headers hold only strings, so ``.pth`` files use the same form); a checkpoint without one gets
:func:`default_card`.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from torch import Tensor

from ..config.data import test_transform
from ..config.specs import ModelSpec
from ..data.classes import imagenet_classes
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, TestTransform, build_test_transform
from ..errors import CheckpointError, CheckpointMismatchError, InvalidArgumentError
from ..model.archs import ARCHS, SEMANTICS, DaViTArch, resolve_arch
from ..model.base import DaViTModel
from ..model.florence2 import is_florence2

CARD_KEY = "davit_card"
MAX_EDGE = 4096  # the largest resize, crop or exact size a card may ask for (Florence-2 takes 768)


@dataclass(frozen=True)
class Preprocessing:
    """Test-time preprocessing: resize the short edge, centre-crop, normalise (0-255 scale).

    ``exact_size`` (height, width): resize both sides to it and do not crop instead, as
    Florence-2's processor does; cards without it (every DaViT classifier's) do not store it.
    """

    resize_edge: int = 236
    crop_size: int = 224
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    exact_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for name in ("resize_edge", "crop_size"):
            _check_edge(f"preprocessing {name}", getattr(self, name))
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (*self.mean, *self.std)):
            raise InvalidArgumentError(f"preprocessing mean and std must be finite numbers, got "
                                       f"{list(self.mean)} and {list(self.std)}")
        if not all(v > 0 for v in self.std):
            raise InvalidArgumentError(f"preprocessing std must be positive (it divides every pixel), got "
                                       f"{list(self.std)}")
        if self.exact_size is not None:
            object.__setattr__(self, "exact_size", tuple(self.exact_size))
            for side in self.exact_size:
                _check_edge("preprocessing exact_size", side)
        self.transform()  # checks the interpolation, exact_size and the channel count of mean and std

    def transform(self) -> TestTransform:
        """The callable that turns an image (path, PIL image or array) into the model's input."""
        return build_test_transform(self.resize_edge, self.crop_size, self.mean, self.std,
                                    self.interpolation, self.exact_size)

    @classmethod
    def of(cls, transform: TestTransform) -> Preprocessing:
        """The preprocessing a test transform (a config's pipeline) performs."""
        return cls(transform.resize_edge, transform.crop_size, transform.interpolation,
                   transform.mean, transform.std, transform.exact_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields; ``exact_size`` only when set, so older versions read DaViT cards."""
        values: dict[str, Any] = {"resize_edge": self.resize_edge, "crop_size": self.crop_size,
                                  "interpolation": self.interpolation, "mean": list(self.mean),
                                  "std": list(self.std)}
        if self.exact_size is not None:
            values["exact_size"] = list(self.exact_size)
        return values


def _check_edge(name: str, value: Any) -> None:
    """Refuse an image size that is not an integer from 1 to :data:`MAX_EDGE`."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_EDGE:
        raise InvalidArgumentError(f"{name} must be an integer from 1 to {MAX_EDGE} pixels, got {value!r}")


# Florence-2's processor: both sides to 768, bicubic, ImageNet mean and std, no crop.
FLORENCE2_PREPROCESSING = Preprocessing(768, 768, "bicubic", IMAGENET_MEAN, IMAGENET_STD, exact_size=(768, 768))


@dataclass(frozen=True)
class ModelCard:
    """What a set of weights is; see the module docstring. Inconsistent fields (class names of
    another length, an unknown semantics) raise :class:`InvalidArgumentError`."""

    arch: str | DaViTArch
    num_classes: int
    class_names: tuple[str, ...] | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    semantics: str = "official"

    def __post_init__(self) -> None:
        resolve_arch(self.arch)
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) \
                or self.num_classes < 0:
            raise InvalidArgumentError(f"num_classes must be a non-negative integer, "
                                       f"got {self.num_classes!r}")
        if self.class_names is not None:
            if isinstance(self.class_names, str) or \
                    not all(isinstance(name, str) for name in self.class_names):
                raise InvalidArgumentError("class_names must be a list of strings")
            if len(self.class_names) != self.num_classes:
                raise InvalidArgumentError(f"{len(self.class_names)} class names for "
                                           f"{self.num_classes} classes")
            object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.semantics not in SEMANTICS:
            raise InvalidArgumentError(f"semantics must be one of {list(SEMANTICS)}, "
                                       f"got {self.semantics!r}")

    @property
    def architecture(self) -> DaViTArch:
        """The architecture record, whether the card names it or holds it."""
        return resolve_arch(self.arch)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that :meth:`from_dict` reads back."""
        return {"arch": self.arch if isinstance(self.arch, str) else self.arch.to_dict(),
                "num_classes": self.num_classes,
                "class_names": list(self.class_names) if self.class_names is not None else None,
                "preprocessing": self.preprocessing.to_dict(),
                "semantics": self.semantics}

    @classmethod
    def from_dict(cls, data: Any, where: str = "the checkpoint") -> ModelCard:
        """The card ``data`` describes; anything this version cannot read raises
        :class:`CheckpointError` naming ``where`` the card came from."""
        try:
            values = dict(_known(data, cls, "model card"))
            pre = values.get("preprocessing") or {}
            pre_values: dict[str, Any] = {
                key: tuple(value) if key in ("mean", "std", "exact_size") and value is not None else value
                for key, value in _known(pre, Preprocessing, "preprocessing").items()}
            values["preprocessing"] = Preprocessing(**pre_values)
            if isinstance(values.get("arch"), dict):
                values["arch"] = resolve_arch(values["arch"])
            if values.get("class_names") is not None:
                values["class_names"] = tuple(values["class_names"])
            return cls(**values)
        except (InvalidArgumentError, TypeError) as error:
            raise CheckpointError(f"the model card of {where} is invalid: {error}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def to_metadata(self) -> dict[str, str]:
        """The card as checkpoint metadata (string values only, as safetensors requires)."""
        return {CARD_KEY: self.to_json()}

    def check(self, state_dict: Mapping[str, Tensor], where: str = "the checkpoint") -> None:
        """Refuse a card that does not describe the (davit-format) tensors it came with."""
        weight = state_dict.get("head.fc.weight")
        if weight is not None and int(weight.shape[0]) != self.num_classes:
            raise CheckpointMismatchError(
                f"the model card of {where} says {self.num_classes} classes but its classifier has "
                f"{int(weight.shape[0])}; the file is inconsistent")
        dims, depths = stage_layout(state_dict)
        arch = self.architecture
        if dims and (dims, depths) != (arch.embed_dims, arch.depths):
            raise CheckpointMismatchError(
                f"the model card of {where} describes embed_dims={list(arch.embed_dims)}, "
                f"depths={list(arch.depths)} but its tensors have embed_dims={list(dims)}, "
                f"depths={list(depths)}; the file is inconsistent")


def _known(data: Any, record: type, what: str) -> dict[str, Any]:
    """``data`` as a dict, refusing fields that ``record`` does not have (a newer version's)."""
    if not isinstance(data, Mapping):
        raise InvalidArgumentError(f"the {what} must be a JSON object, not {type(data).__name__}")
    names = [f.name for f in fields(record)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InvalidArgumentError(f"the {what} has fields {unknown} that this version of davit "
                                   "does not know (written by a newer version? upgrade davit)")
    return dict(data)


def default_card(arch: str | DaViTArch, num_classes: int, semantics: str = "official") -> ModelCard:
    """The card of weights that carry none: ImageNet preprocessing (236/224 bicubic; Florence-2's
    processor for its towers) and, for 1000 classes, the ImageNet class names."""
    names = tuple(imagenet_classes()) if num_classes == 1000 else None
    preprocessing = FLORENCE2_PREPROCESSING if is_florence2(resolve_arch(arch)) else Preprocessing()
    return ModelCard(arch, num_classes, names, preprocessing, semantics)


def config_card(spec: ModelSpec, cfg: dict[str, Any],
                class_names: Sequence[str] | None = None) -> ModelCard:
    """The card of the model a config describes: ``spec`` (its checked ``model`` section), the
    preprocessing of its test pipeline (else its validation one, else the default) and
    ``class_names`` when there is one per class (else ImageNet's for 1000 classes)."""
    section = next((name for name in ("test_dataloader", "val_dataloader") if cfg.get(name)), None)
    preprocessing = Preprocessing.of(test_transform(cfg, section)) if section else Preprocessing()
    card = replace(default_card(spec.arch, spec.num_classes, spec.semantics), preprocessing=preprocessing)
    if class_names is not None and len(class_names) == spec.num_classes:
        card = replace(card, class_names=tuple(class_names))
    return card


def card_from_metadata(meta: Mapping[str, Any], where: str = "the checkpoint") -> ModelCard | None:
    """The card stored in a checkpoint's metadata; for a training checkpoint of an older version
    (``arch``, ``num_classes`` and ``semantics`` in its ``meta``) a default card of that model;
    None when the metadata says nothing."""
    text = meta.get(CARD_KEY)
    if text is not None:
        try:
            data = json.loads(text) if isinstance(text, str) else text
        except json.JSONDecodeError as error:
            raise CheckpointError(f"the model card of {where} is not valid JSON: {error}") from None
        return ModelCard.from_dict(data, where)
    if isinstance(meta.get("arch"), dict) and isinstance(meta.get("num_classes"), int):
        try:
            return default_card(resolve_arch(meta["arch"]), meta["num_classes"],
                                str(meta.get("semantics", "official")))
        except InvalidArgumentError as error:
            raise CheckpointError(f"the model recorded in {where} is invalid: {error}") from None
    return None


def card_of(model: DaViTModel) -> ModelCard:
    """The card of a classifier as it is now: its own card (preprocessing kept), updated with its
    current class count, class names and semantics, so a re-headed model is described right."""
    arch = model.arch
    card = model.card or default_card(arch, model.num_classes, model.semantics)
    names = model.class_names
    if names is not None and len(names) != model.num_classes:
        names = None
    return replace(card, arch=card.arch if card.architecture == arch else arch,
                   num_classes=model.num_classes, semantics=model.semantics,
                   class_names=tuple(names) if names is not None else None)


def stage_layout(state_dict: Mapping[str, Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The per-stage widths and depths of a davit-format state dict (empty for a non-DaViT one)."""
    dims, depths = [], []
    stage = 0
    while f"backbone.stages.{stage}.blocks.0.spatial.norm1.weight" in state_dict:
        dims.append(int(state_dict[f"backbone.stages.{stage}.blocks.0.spatial.norm1.weight"].shape[0]))
        block = re.compile(rf"^backbone\.stages\.{stage}\.blocks\.\d+\.spatial\.norm1\.weight$")
        depths.append(sum(1 for key in state_dict if block.match(key)))
        stage += 1
    return tuple(dims), tuple(depths)


def guessed_card(state_dict: Mapping[str, Tensor]) -> ModelCard | None:
    """The default card of (davit-format) weights without one, when their tensors have one of the
    standard architectures (the head's class count, else 1000); None otherwise."""
    arch = guess_arch(state_dict)
    if arch not in ARCHS:
        return None
    head = state_dict.get("head.fc.weight")
    return default_card(arch, int(head.shape[0]) if head is not None else 1000 if ARCHS[arch].head else 0)


def guess_arch(state_dict: Mapping[str, Tensor]) -> str | None:
    """Name the standard architecture whose widths, depths and patch kernels (DaViT base and
    Florence-2 base differ only there) a davit-format state dict has, or describe the widths and
    depths (None for no DaViT stages)."""
    dims, depths = stage_layout(state_dict)
    kernels = _patch_kernels(state_dict, len(dims))
    for name, arch in ARCHS.items():
        if dims == arch.embed_dims and depths == arch.depths and kernels in ((), arch.patch_kernels):
            return name
    return f"embed_dims={list(dims)}, depths={list(depths)}" if dims else None


def _patch_kernels(state_dict: Mapping[str, Tensor], stages: int) -> tuple[int, ...]:
    """The kernel size of every stage's patch embedding (empty when a stage has none)."""
    keys = ["backbone.stem.conv.weight"] + [f"backbone.stages.{stage}.downsample.conv.weight"
                                            for stage in range(1, stages)]
    if not all(key in state_dict for key in keys):
        return ()
    return tuple(int(state_dict[key].shape[-1]) for key in keys)
