"""The data a config asks for: transforms, data loader settings and datasets, by section.

``section`` is the config key a spec is read from (``test_dataloader``, ``val_dataloader`` or
``train_dataloader``); every message names it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data import TestTransform, build_test_transform
from ..data.datasets import LabelledImageDataset, build_dataset
from ..data.train_transforms import BatchAugment, TrainTransform, build_batch_augment, build_train_transform
from ..errors import ConfigError, PipelineError
from .values import flag, integer, number, subsection

# pin_memory follows the device; collate_fn is the library's own.
LOADER_KEYS = {"batch_size", "num_workers", "persistent_workers", "pin_memory", "sampler",
               "dataset", "collate_fn"}
TEST_PIPELINE = ["LoadImageFromFile", "ResizeEdge", "CenterCrop", "PackInputs"]
_PIPELINE_NAMES = {"test_dataloader": "test pipeline", "val_dataloader": "validation pipeline"}


@dataclass(frozen=True)
class LoaderSpec:
    """A data loader section's settings (the dataset is built by :func:`build_section_dataset`)."""

    batch_size: int
    num_workers: int
    persistent_workers: bool


def preprocessor(cfg: dict) -> dict:
    """The config's data preprocessor (``model.data_preprocessor`` or top-level)."""
    return (subsection(subsection(cfg, "model"), "data_preprocessor", "model")
            or subsection(cfg, "data_preprocessor"))


def loader_section(cfg: dict, section: str) -> dict:
    """The ``section`` loader dict of a training run, with the options the trainer supports."""
    loader = cfg.get(section)
    if not isinstance(loader, dict) or not isinstance(loader.get("dataset"), dict):
        raise ConfigError(f"the config has no {section} with a dataset")
    unknown = sorted(set(loader) - LOADER_KEYS)
    if unknown:
        raise ConfigError(f"{section} options {unknown} are not supported; supported: {sorted(LOADER_KEYS)}")
    sampler = loader.get("sampler") or {}
    if sampler.get("type", "DefaultSampler") != "DefaultSampler":
        raise ConfigError(f"{section}.sampler must be DefaultSampler (shuffling is per epoch and "
                          "process, as DistributedSampler)")
    return loader


def loader_spec(loader: dict, section: str, default_batch_size: int | None = 1) -> LoaderSpec:
    """Batch size, workers and persistence of a loader dict; without ``default_batch_size`` the
    batch size must be given."""
    return LoaderSpec(integer(loader, "batch_size", section, default_batch_size, minimum=1),
                      integer(loader, "num_workers", section, 0, minimum=0),
                      flag(loader, "persistent_workers", section, False))


def normalisation(pre: dict) -> tuple[list[float], list[float]]:
    """The data preprocessor's ``mean`` and ``std`` (three numbers each, ``std`` positive)."""
    values = []
    for key in ("mean", "std"):
        given = pre.get(key)
        if not isinstance(given, (list, tuple)) or len(given) != 3:
            raise ConfigError(f"data_preprocessor.{key} must be three numbers (R, G, B on a 0-255 "
                              f"scale), got {given!r}")
        values.append([number(dict(enumerate(given)), i, f"data_preprocessor.{key}",
                              positive=key == "std") for i in range(3)])
    return values[0], values[1]


def test_transform(cfg: dict, section: str = "test_dataloader") -> TestTransform:
    """The test transform the config's data preprocessor and ``section`` pipeline describe.

    The pipeline must be ``LoadImageFromFile``, ``ResizeEdge`` (short edge, Pillow backend),
    ``CenterCrop`` and ``PackInputs``, as in mmpretrain's DaViT configs.
    """
    pre = preprocessor(cfg)
    if not pre.get("to_rgb", False):
        raise ConfigError("data_preprocessor.to_rgb is not True, so the model would get BGR images, "
                          "which DaViT checkpoints do not expect; set data_preprocessor.to_rgb=True")
    if "mean" not in pre or "std" not in pre:
        raise ConfigError("data_preprocessor needs the normalisation mean and std, e.g. "
                          "mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]")
    steps = subsection(subsection(cfg, section), "dataset", section).get("pipeline")
    if steps is None:
        raise ConfigError(f"the config has no {section}.dataset.pipeline")
    check_steps(steps, f"{section}.dataset.pipeline")
    name = _PIPELINE_NAMES.get(section, f"{section} pipeline")
    types = [step.get("type") for step in steps]
    if types != TEST_PIPELINE:
        raise ConfigError(f"the {name} is {types}; this evaluator runs {TEST_PIPELINE} only")
    # mmpretrain's defaults first, so that an omitted option is checked as mmpretrain reads it
    resize = {"edge": "short", "backend": "cv2", "interpolation": "bilinear", **steps[1]}
    _check_step(resize, {"scale": None, "edge": "short", "backend": "pillow", "interpolation": None}, name)
    _check_step(steps[2], {"crop_size": None}, name)
    _check_step(steps[0], {}, name)
    _check_step(steps[3], {}, name)
    where = f"{section}.dataset.pipeline"
    scale = integer(resize, "scale", f"{where}.1", minimum=1)
    crop_size = integer(steps[2], "crop_size", f"{where}.2", minimum=1)
    mean, std = normalisation(pre)
    try:
        return build_test_transform(scale, crop_size, mean, std, resize["interpolation"])
    except ValueError as error:
        raise ConfigError(f"{name}: {error}") from None


def _check_step(step: dict, allowed: dict, pipeline: str) -> None:
    """Refuse keys outside ``allowed`` and values that differ from the fixed ones (not None)."""
    for key, value in step.items():
        if key == "type":
            continue
        if key not in allowed:
            raise ConfigError(f"{pipeline} step {step['type']}: option {key}={value!r} is not "
                              f"supported; remove it")
        if allowed[key] is not None and value != allowed[key]:
            raise ConfigError(f"{pipeline} step {step['type']}: {key}={value!r} is not "
                              f"supported; use {key}={allowed[key]!r}")


def train_transform(cfg: dict, section: str = "train_dataloader") -> TrainTransform:
    """The augmenting transform of the ``section`` pipeline (or the config's ``train_pipeline``)."""
    pre = preprocessor(cfg)
    if "mean" not in pre or "std" not in pre or not pre.get("to_rgb", False):
        raise ConfigError("data_preprocessor needs mean, std (RGB, 0-255 scale) and to_rgb=True, "
                          "e.g. mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]")
    pipeline = cfg[section]["dataset"].get("pipeline") or cfg.get("train_pipeline")
    if not pipeline:
        raise ConfigError(f"the config has no {section}.dataset.pipeline")
    check_steps(pipeline, f"{section}.dataset.pipeline")
    mean, std = normalisation(pre)
    try:
        return build_train_transform(pipeline, mean, std)
    except (PipelineError, ValueError, TypeError) as error:  # a step's value of the wrong type
        raise ConfigError(f"{section}.dataset.pipeline: {error}") from None


def check_steps(steps: Any, where: str) -> None:
    """A pipeline is a list of dicts, each with a ``type``."""
    if not isinstance(steps, (list, tuple)) or not all(isinstance(s, dict) and "type" in s for s in steps):
        raise ConfigError(f"{where} must be a list of dict(type=..., ...) steps, got {steps!r}")


def build_section_dataset(cfg: dict, section: str, transform: Any,
                          num_classes: int | None) -> LabelledImageDataset:
    """The dataset of ``<section>.dataset`` (its pipeline is ``transform``)."""
    dataset_cfg = {k: v for k, v in subsection(subsection(cfg, section), "dataset", section).items()
                   if k != "pipeline"}
    _check_dataset_values(dataset_cfg, f"{section}.dataset")
    return build_dataset(dataset_cfg, transform, num_classes, section)


def _check_dataset_values(dataset: dict, where: str) -> None:
    """The types of a dataset's paths, class names and ``with_label``."""
    for key in ("type", "data_root", "ann_file", "split"):
        value = dataset.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{where}.{key} must be a string, got {value!r}; quote a number "
                              f"({key}='{value}')")
    prefix = dataset.get("data_prefix")
    if isinstance(prefix, dict):
        prefix = prefix.get("img_path")
    if prefix is not None and not isinstance(prefix, str):
        raise ConfigError(f"{where}.data_prefix must be a path or dict(img_path=...), got "
                          f"{dataset.get('data_prefix')!r}")
    classes = dataset.get("classes")
    if classes is not None and not isinstance(classes, (str, list, tuple)):
        raise ConfigError(f"{where}.classes must be a list of names or a file of names, got {classes!r}")
    if "with_label" in dataset:
        flag(dataset, "with_label", where, True)


def batch_augment(cfg: dict, num_classes: int) -> BatchAugment | None:
    """Mixup/CutMix of the config's ``model.train_cfg.augments``, or None."""
    train_cfg = (cfg.get("model") or {}).get("train_cfg")
    augments = (train_cfg or {}).get("augments") or []
    for i, augment in enumerate([augments] if isinstance(augments, dict) else augments):
        if isinstance(augment, dict):
            number(augment, "alpha", f"model.train_cfg.augments.{i}", 1.0, positive=True)
    return build_batch_augment(train_cfg, num_classes)
