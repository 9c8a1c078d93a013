"""Training-time augmentation built from an mmpretrain ``train_pipeline``, on PIL images.

Supported steps, in mmpretrain's names: ``LoadImageFromFile``, ``RandomResizedCrop``,
``ResizeEdge``, ``CenterCrop``, ``RandomCrop``, ``RandomFlip``, ``RandAugment`` (timm's increasing
policy), ``RandomErasing`` and ``PackInputs``. mmpretrain decodes images as BGR, so the colours a
pipeline gives (``pad_val``, ``fill_color``, ``fill_std``) are in BGR order; they are reversed here,
where images are RGB. Resampling is always Pillow's (mmpretrain's ``backend='pillow'``).

Batch-level augmentation (mmpretrain's ``model.train_cfg.augments``: Mixup, CutMix) is
:func:`build_batch_augment`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.functional import pil_to_tensor

from ..errors import PipelineError, require
from .images import ImageSource, load_image

_INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "lanczos": InterpolationMode.LANCZOS,
}
_PIL_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

PipelineStep = Callable[[Image.Image], Image.Image]



class TrainTransform:
    """Image source -> augmented, normalised float32 (3, H, W) tensor.

    Runs the PIL ``steps`` in order, converts to a tensor, computes ``(x - mean) / std`` on RGB
    values in 0..255, then applies ``erasing`` (which works on normalised values) if given.
    Raises :class:`~davit.data.ImageLoadError` for an unreadable image.
    """

    def __init__(self, steps: Sequence[PipelineStep], mean: Sequence[float], std: Sequence[float],
                 erasing: v2.RandomErasing | None = None) -> None:
        self.steps = list(steps)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.erasing = erasing

    def __call__(self, source: ImageSource) -> Tensor:
        image = load_image(source)
        for step in self.steps:
            image = step(image)
        x = (pil_to_tensor(image).float() - self.mean) / self.std
        return self.erasing(x) if self.erasing is not None else x

    def __repr__(self) -> str:
        lines = [f"  {step!r}" for step in self.steps]
        if self.erasing is not None:
            lines.append(f"  {self.erasing!r} (on normalised values)")
        return "TrainTransform(\n" + "\n".join(lines) + "\n)"


def build_train_transform(pipeline: Sequence[dict], mean: Sequence[float],
                          std: Sequence[float]) -> TrainTransform:
    """The :class:`TrainTransform` an mmpretrain ``train_pipeline`` list describes.

    ``mean`` and ``std`` are the data preprocessor's RGB normalisation (0..255 scale). The
    pipeline must start with ``LoadImageFromFile`` and end with ``PackInputs``;
    ``RandomErasing``, when present, must come right before ``PackInputs``.
    """
    steps = [dict(step) for step in pipeline]
    types = [step.get("type") for step in steps]
    if not steps or types[0] != "LoadImageFromFile" or types[-1] != "PackInputs":
        raise PipelineError(f"the training pipeline is {types}; it must start with "
                            "LoadImageFromFile and end with PackInputs")
    middle = steps[1:-1]
    erasing = None
    if middle and middle[-1].get("type") == "RandomErasing":
        erasing = _random_erasing(middle.pop(), mean, std)
    pil_steps = []
    for step in middle:
        kind = step.pop("type")
        if kind not in _BUILDERS:
            where = " (it must come right before PackInputs)" if kind == "RandomErasing" else ""
            supported = ", ".join(["LoadImageFromFile", *_BUILDERS, "RandomErasing", "PackInputs"])
            raise PipelineError(f"training pipeline step {kind!r} is not supported{where}; "
                                f"supported steps: {supported}")
        pil_steps.append(_BUILDERS[kind](step))
    return TrainTransform(pil_steps, mean, std, erasing)


def _options(step: dict, kind: str, allowed: dict[str, Any]) -> dict[str, Any]:
    """``allowed`` (the defaults) updated with ``step``; an unknown option is an error."""
    unknown = sorted(set(step) - set(allowed))
    if unknown:
        raise PipelineError(f"{kind}: options {unknown} are not supported; supported: "
                            f"{sorted(allowed)}")
    return {**allowed, **step}


def _interpolation(value: str, kind: str) -> InterpolationMode:
    if value not in _INTERPOLATION:
        raise PipelineError(f"{kind}: interpolation must be one of {sorted(_INTERPOLATION)}, "
                            f"got {value!r}")
    return _INTERPOLATION[value]


def _size(scale: int | Sequence[int], kind: str) -> tuple[int, int]:
    """mmpretrain's ``scale``/``crop_size`` (an int or (width, height)) as torchvision's (h, w)."""
    if isinstance(scale, int):
        return scale, scale
    if isinstance(scale, (list, tuple)) and len(scale) == 2 and all(isinstance(s, int) for s in scale):
        return scale[1], scale[0]
    raise PipelineError(f"{kind}: the size must be an int or (width, height), got {scale!r}")


def _rgb(colour: float | Sequence[float]) -> float | list[float]:
    """A BGR colour (mmpretrain's order) as RGB; a single number is kept."""
    if isinstance(colour, (list, tuple)):
        return [float(c) for c in reversed(colour)]
    return float(colour)  # type: ignore[arg-type]  # a number: Sequence is excluded above


def _random_resized_crop(step: dict) -> PipelineStep:
    o = _options(step, "RandomResizedCrop", {
        "scale": None, "crop_ratio_range": (0.08, 1.0), "aspect_ratio_range": (3 / 4, 4 / 3),
        "max_attempts": 10, "interpolation": "bilinear", "backend": "cv2"})
    if o["max_attempts"] != 10:
        raise PipelineError("RandomResizedCrop: only max_attempts=10 is supported")
    return v2.RandomResizedCrop(_size(o["scale"], "RandomResizedCrop"),
                                scale=tuple(o["crop_ratio_range"]), ratio=tuple(o["aspect_ratio_range"]),
                                interpolation=_interpolation(o["interpolation"], "RandomResizedCrop"))


def _resize_edge(step: dict) -> PipelineStep:
    o = _options(step, "ResizeEdge", {"scale": None, "edge": "short", "interpolation": "bilinear",
                                      "backend": "cv2"})
    if o["edge"] != "short" or not isinstance(o["scale"], int):
        raise PipelineError("ResizeEdge: only edge='short' with an integer scale is supported")
    return v2.Resize(o["scale"], interpolation=_interpolation(o["interpolation"], "ResizeEdge"))


def _center_crop(step: dict) -> PipelineStep:
    o = _options(step, "CenterCrop", {"crop_size": None})
    return v2.CenterCrop(_size(o["crop_size"], "CenterCrop"))


def _random_crop(step: dict) -> PipelineStep:
    o = _options(step, "RandomCrop", {"crop_size": None, "padding": None, "pad_if_needed": False,
                                      "pad_val": 0, "padding_mode": "constant"})
    fill = _rgb(o["pad_val"])
    return v2.RandomCrop(_size(o["crop_size"], "RandomCrop"), padding=o["padding"],
                         pad_if_needed=o["pad_if_needed"],
                         fill=[round(c) for c in fill] if isinstance(fill, list) else round(fill),
                         padding_mode=o["padding_mode"])


def _random_flip(step: dict) -> PipelineStep:
    o = _options(step, "RandomFlip", {"prob": 0.5, "direction": "horizontal"})
    if o["direction"] == "horizontal":
        return v2.RandomHorizontalFlip(o["prob"])
    if o["direction"] == "vertical":
        return v2.RandomVerticalFlip(o["prob"])
    raise PipelineError(f"RandomFlip: direction must be 'horizontal' or 'vertical', got "
                        f"{o['direction']!r}")


def _rand_augment(step: dict) -> PipelineStep:
    o = _options(step, "RandAugment", {"policies": None, "num_policies": 2, "total_level": 10,
                                       "magnitude_level": 9, "magnitude_std": 0.0, "hparams": {}})
    if o["policies"] != "timm_increasing":
        raise PipelineError("RandAugment: only policies='timm_increasing' (timm's "
                            "'rand-...-inc1' policy, as in DaViT's recipe) is supported")
    hparams = dict(o["hparams"])
    unknown = sorted(set(hparams) - {"pad_val", "interpolation"})
    if unknown:
        raise PipelineError(f"RandAugment: hparams {unknown} are not supported; supported: "
                            "pad_val, interpolation")
    interpolation = hparams.get("interpolation", "bicubic")
    if interpolation not in _PIL_INTERPOLATION:
        raise PipelineError(f"RandAugment: interpolation must be one of "
                            f"{sorted(_PIL_INTERPOLATION)}, got {interpolation!r}")
    pad = _rgb(hparams.get("pad_val", 128))
    fill = tuple(round(c) for c in pad) if isinstance(pad, list) else (round(pad),) * 3
    # timm's increasing policy is what mmpretrain's 'timm_increasing' reproduces; translations are
    # relative to the image size (timm's default translate_pct 0.45).
    require("timm", "train", "RandAugment")
    from timm.data.auto_augment import rand_augment_transform

    config = (f"rand-m{o['magnitude_level']}-n{o['num_policies']}-mstd{o['magnitude_std']}"
              f"-mmax{o['total_level']}-inc1")
    transform = rand_augment_transform(config, {"img_mean": fill, "translate_pct": 0.45,
                                                "interpolation": _PIL_INTERPOLATION[interpolation]})
    for op in transform.ops:
        if op.name == "PosterizeIncreasing":
            op.aug_fn = _posterize
    return transform


def _posterize(image: Image.Image, bits: int, **_: Any) -> Image.Image:
    """Keep the ``bits`` high bits of every channel. At the top magnitude timm's policy asks for 0
    bits, which Pillow refuses; as in mmpretrain (mmcv's posterize) that gives a black image."""
    if bits >= 8:
        return image
    if bits <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits)


def _random_erasing(step: dict, mean: Sequence[float], std: Sequence[float]) -> v2.RandomErasing:
    """Erasing on normalised tensors. mmpretrain's ``mode='rand'`` draws each erased pixel from
    N(fill_color, fill_std); with the data mean and std that is N(0, 1) after normalisation,
    torchvision's ``value='random'``."""
    o = _options(dict(step), "RandomErasing", {
        "type": None, "erase_prob": 0.5, "min_area_ratio": 0.02, "max_area_ratio": 0.4,
        "aspect_range": (3 / 10, 10 / 3), "mode": "const", "fill_color": (128, 128, 128),
        "fill_std": None})
    aspect = o["aspect_range"]
    if isinstance(aspect, (int, float)):
        aspect = sorted((aspect, 1 / aspect))
    fill = _rgb3(o["fill_color"])
    value: list[float] | str
    if o["mode"] == "const":
        value = [(f - m) / s for f, m, s in zip(fill, mean, std)]
    elif o["mode"] == "rand":
        if o["fill_std"] is None or not _close(fill, mean) or not _close(_rgb3(o["fill_std"]), std):
            raise PipelineError("RandomErasing: mode='rand' is supported with fill_color and "
                                "fill_std equal to the data preprocessor's mean and std (in BGR "
                                "order), as in DaViT's recipe")
        value = "random"
    else:
        raise PipelineError(f"RandomErasing: mode must be 'const' or 'rand', got {o['mode']!r}")
    return v2.RandomErasing(p=o["erase_prob"], scale=(o["min_area_ratio"], o["max_area_ratio"]),
                            ratio=tuple(aspect), value=value)


def _rgb3(colour: float | Sequence[float]) -> list[float]:
    """A BGR colour or a grey level as three RGB values."""
    rgb = _rgb(colour)
    return rgb if isinstance(rgb, list) else [rgb] * 3


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-3 for x, y in zip(a, b))


_BUILDERS: dict[str, Callable[[dict], PipelineStep]] = {
    "RandomResizedCrop": _random_resized_crop,
    "ResizeEdge": _resize_edge,
    "CenterCrop": _center_crop,
    "RandomCrop": _random_crop,
    "RandomFlip": _random_flip,
    "RandAugment": _rand_augment,
}


class BatchAugment:
    """mmpretrain's ``RandomBatchAugment``: each batch gets one of Mixup and CutMix, chosen at
    random (uniformly, or with ``probs``). Returns the mixed images and soft labels."""

    def __init__(self, augments: Sequence[v2.Transform], probs: Sequence[float] | None = None) -> None:
        self.choice = v2.RandomChoice(list(augments), p=list(probs) if probs else None)

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return self.choice(images, labels)


def build_batch_augment(train_cfg: dict | None, num_classes: int) -> BatchAugment | None:
    """The batch augmentation of mmpretrain's ``model.train_cfg`` (``augments``: ``Mixup`` and
    ``CutMix`` with ``alpha``; optional ``probs``), or None when it lists none."""
    train_cfg = dict(train_cfg or {})
    augments = train_cfg.pop("augments", None) or []
    probs = train_cfg.pop("probs", None)
    if train_cfg:
        raise PipelineError(f"model.train_cfg options {sorted(train_cfg)} are not supported; "
                            "supported: augments, probs")
    if isinstance(augments, dict):
        augments = [augments]
    built = []
    for augment in augments:
        o = dict(augment)
        kind = o.pop("type", None)
        alpha = o.pop("alpha", 1.0)
        if o or kind not in ("Mixup", "CutMix"):
            raise PipelineError(f"model.train_cfg.augments: {augment!r} is not supported; use "
                                "dict(type='Mixup', alpha=...) or dict(type='CutMix', alpha=...)")
        transform = v2.MixUp if kind == "Mixup" else v2.CutMix
        built.append(transform(alpha=float(alpha), num_classes=num_classes))
    if not built:
        return None
    if probs is not None and len(probs) != len(built):
        raise PipelineError(f"model.train_cfg.probs has {len(probs)} entries for {len(built)} augments")
    return BatchAugment(built, probs)
