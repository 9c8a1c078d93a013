"""Labelled image datasets for evaluation: ImageNet-format annotation files and class sub-folders.

An item is a :class:`Sample`; an image that cannot be decoded gives ``image=None`` and the error
message instead of raising, so one bad file does not stop an evaluation. :func:`collate_samples`
batches the decoded images and carries the failures alongside.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset

from ..errors import DatasetError
from .classes import imagenet_classes, imagenet_synsets
from .images import ImageLoadError
from .sources import DEFAULT_IMAGE_KEYS, DEFAULT_LABEL_KEY, NO_LABEL, StoredSamples, hf_samples, webdataset_samples

logger = logging.getLogger("davit")

# mmpretrain's IMG_EXTENSIONS, and the other formats Pillow reads (a GIF gives its first frame)
MMPRETRAIN_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif")
IMAGE_EXTENSIONS = (*MMPRETRAIN_EXTENSIONS, ".tiff", ".webp", ".gif")
DATASET_TYPES = ("ImageNet", "CustomDataset", "WebDataset", "HFDataset")
# Dataset config keys read elsewhere (the pipeline builds the transform) or without effect here.
_OTHER_KEYS = {"type", "pipeline", "test_mode", "lazy_init", "serialize_data", "max_refetch"}

Transform = Callable[[Any], torch.Tensor]



class Sample(NamedTuple):
    """One dataset item: the image tensor (None when it failed to load) and why it failed."""

    image: torch.Tensor | None
    label: int
    position: int  # the item's index in the dataset
    error: str | None


@dataclass
class Batch:
    """Collated samples: the stacked images that loaded, and the (index, label, error) of those
    that did not."""

    images: torch.Tensor | None
    labels: torch.Tensor
    indices: list[int]
    failures: list[tuple[int, int, str]]

    def pin_memory(self) -> Batch:
        images = self.images.pin_memory() if self.images is not None else None
        return Batch(images, self.labels.pin_memory(), self.indices, self.failures)


def collate_samples(samples: list[Sample]) -> Batch:
    """Stack the loaded images of ``samples``; list the failed ones in ``failures``."""
    loaded = [s.image for s in samples if s.image is not None]
    good = [s for s in samples if s.image is not None]
    images = torch.stack(loaded) if loaded else None
    labels = torch.tensor([s.label for s in good], dtype=torch.long)
    failures = [(s.position, s.label, s.error or "unreadable") for s in samples if s.image is None]
    return Batch(images, labels, [s.position for s in good], failures)


class LabelledImageDataset(Dataset):
    """Image files with integer labels, decoded and transformed on access.

    Args:
        samples: (image, label) pairs: paths, stored images (:mod:`.sources`) or anything the
            transform takes.
        transform: maps an image path to a tensor; raises ImageLoadError for a bad file.
        classes: class names indexed by label, when known.
        num_classes: when given, every label must lie in ``[0, num_classes)``.
        source: what the samples came from, for error messages.
    """

    def __init__(self, samples: list[tuple[Any, int]], transform: Transform,
                 classes: list[str] | None = None, num_classes: int | None = None,
                 source: str = "the dataset") -> None:
        if not samples:
            raise DatasetError(f"{source} lists no images; point the dataset at a folder or "
                               "annotation file that holds some")
        self.samples = samples
        self.transform = transform
        self.classes = classes
        self.source = source
        if num_classes is not None:
            self._check_labels(num_classes)

    def _check_labels(self, num_classes: int) -> None:
        for position, (_path, label) in enumerate(self.samples):
            if not 0 <= label < num_classes:
                raise DatasetError(
                    f"{self.describe(position)} has label {label}, outside the model's "
                    f"{num_classes} classes (0..{num_classes - 1}); fix the labels or use a model "
                    "with more classes (model.head.num_classes)")

    def describe(self, position: int) -> str:
        """Where sample ``position`` comes from, for messages."""
        return str(self.samples[position][0])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        path, label = self.samples[index]
        try:
            return Sample(self.transform(path), label, index, None)
        except ImageLoadError as error:
            message = str(error) if str(path) in str(error) else f"{path}: {error}"
            return Sample(None, label, index, message)


class AnnotatedImageDataset(LabelledImageDataset):
    """An ImageNet-format annotation file: one ``relative/path label`` line per image, the path
    relative to ``img_root`` (it may contain spaces; the label follows the last one)."""

    def __init__(self, ann_file: str | Path, img_root: str | Path, transform: Transform,
                 classes: list[str] | None = None, num_classes: int | None = None,
                 section: str = "test_dataloader") -> None:
        ann_file, img_root = Path(ann_file), Path(img_root)
        if not ann_file.is_file():
            raise DatasetError(f"annotation file {ann_file} does not exist; create it (one "
                               "'relative/path label' line per image) or set "
                               f"{section}.dataset.ann_file")
        if not img_root.is_dir():
            raise DatasetError(f"image folder {img_root} does not exist; the paths in {ann_file} "
                               f"are relative to it (set {section}.dataset.data_prefix)")
        samples, self.line_numbers = [], []
        with open(ann_file, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                line = line.strip()
                if not line:
                    continue
                name, _, label = line.rpartition(" ")
                if not name or not label.lstrip("-").isdigit():
                    raise DatasetError(f"{ann_file} line {number}: expected 'relative/path label', "
                                       f"got {line!r}")
                samples.append((img_root / name, int(label)))
                self.line_numbers.append(number)
        self.ann_file = ann_file
        super().__init__(samples, transform, classes, num_classes, source=str(ann_file))

    def describe(self, position: int) -> str:
        return f"{self.ann_file} line {self.line_numbers[position]} ({self.samples[position][0]})"


class ClassFolderDataset(LabelledImageDataset):
    """A folder of class sub-folders (``root/<class>/**/<image>``), as mmpretrain reads one.

    Labels follow the sorted sub-folder names. With ``imagenet_synsets=True`` the sub-folders must
    be ImageNet WordNet ids (``n01440764``) and each takes its ImageNet-1k label, so a subset of the
    classes keeps the model's numbering. Images are files with ``extensions`` (by default
    :data:`IMAGE_EXTENSIONS`, any case), in sorted order.
    """

    def __init__(self, root: str | Path, transform: Transform, classes: list[str] | None = None,
                 num_classes: int | None = None, imagenet_synsets: bool = False,
                 section: str = "test_dataloader", extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"image folder {root} does not exist; set "
                               f"{section}.dataset.data_root / data_prefix")
        folders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        if not folders:
            raise DatasetError(f"{root} has no class sub-folders and no annotation file was "
                               "given; put each class's images in a sub-folder, or set "
                               f"{section}.dataset.ann_file")
        files = {folder: image_files(root / folder, extensions) for folder in folders}
        empty = [folder for folder in folders if not files[folder]]
        if len(empty) == len(folders):
            raise DatasetError(f"found no images ({', '.join(extensions)}) in the class "
                               f"sub-folders of {root}")
        if empty and not imagenet_synsets:
            # Every sub-folder is a class: an empty one would silently add a class that is
            # never trained (and the error a user sees is about the class count).
            raise DatasetError(f"the class folder(s) {', '.join(str(root / f) for f in empty)} "
                               f"hold no images ({', '.join(extensions)}); add images "
                               "or remove the folder(s)")
        if imagenet_synsets:
            labels = _synset_labels(root, folders, section)
            classes = imagenet_classes()
        else:
            labels = {folder: i for i, folder in enumerate(folders)}
            if classes is not None and len(classes) != len(folders):
                raise DatasetError(f"{root} has {len(folders)} class sub-folders but "
                                   f"{len(classes)} class names are configured; make them agree")
            classes = classes if classes is not None else folders
            if num_classes is not None and len(folders) > num_classes:
                raise DatasetError(f"{root} has {len(folders)} class sub-folders but the model "
                                   f"has {num_classes} classes; use a model with "
                                   f"{len(folders)} classes (model.head.num_classes)")
        samples = [(root / folder / name, labels[folder]) for folder in folders for name in files[folder]]
        if empty:
            logger.warning("no images (%s) in the class folder(s) %s of %s",
                           ", ".join(extensions), ", ".join(empty), root)
        super().__init__(samples, transform, classes, num_classes, source=str(root))


def _synset_labels(root: Path, folders: list[str], section: str) -> dict[str, int]:
    index = {synset: i for i, synset in enumerate(imagenet_synsets())}
    unknown = [f for f in folders if f not in index]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise DatasetError(f"{root}: an ImageNet dataset's class folders must be WordNet ids "
                           f"such as n01440764, but {shown} is not one; for other classes set "
                           f"{section}.dataset.type=CustomDataset")
    return {folder: index[folder] for folder in folders}


@dataclass
class FolderImages:
    """What a walk of a folder found: the image files (relative POSIX paths, sorted) and how many
    other files it passed over for their extension."""

    files: list[str]
    not_images: int = 0


def walk_images(folder: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> FolderImages:
    """The files under ``folder`` (recursively, symlinked folders followed) whose names end in
    ``extensions`` (any case). Each real folder is walked once, so a symlink loop, or two links to
    one folder, lists its images once."""
    found, not_images = [], 0
    walked: set[str] = set()
    for directory, subfolders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(directory)
        if real in walked:
            subfolders[:] = []
            continue
        walked.add(real)
        subfolders.sort()
        for name in files:
            if name.lower().endswith(extensions):
                found.append((Path(directory) / name).relative_to(folder).as_posix())
            else:
                not_images += 1
    return FolderImages(sorted(found), not_images)


def image_files(folder: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[str]:
    """Relative POSIX paths of the image files under ``folder`` (:func:`walk_images`), sorted."""
    return walk_images(folder, extensions).files


def build_dataset(cfg: dict, transform: Transform, num_classes: int | None = None,
                  section: str = "test_dataloader") -> LabelledImageDataset:
    """The dataset an mmpretrain ``<section>.dataset`` dict describes (``section`` is the config
    key that messages name: ``test_dataloader``, ``val_dataloader`` or ``train_dataloader``).

    ``type`` is ``ImageNet`` (ImageNet-1k class names; ``split`` picks ``<split>/`` and, when it
    exists, ``meta/<split>.txt``) or ``CustomDataset`` (class names from ``classes`` or the
    sub-folders). With an annotation file (``ann_file``) the images are listed there; without one
    they are read from class sub-folders. Relative ``ann_file`` and ``data_prefix`` are joined to
    ``data_root``. ``classes`` may be a list or a file with one name per line.
    """
    kind = cfg.get("type", "ImageNet")
    if kind not in DATASET_TYPES:
        raise DatasetError(f"unsupported dataset type {kind!r}; use one of {list(DATASET_TYPES)}")
    if kind in ("WebDataset", "HFDataset"):
        return _stored_dataset(cfg, transform, num_classes, section)
    known = _OTHER_KEYS | {"data_root", "data_prefix", "ann_file", "split", "classes",
                               "metainfo", "with_label", "extensions"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise DatasetError(f"{section}.dataset has options this evaluator does not "
                           f"support: {unknown}; remove them from the config")
    if not cfg.get("with_label", True):
        raise DatasetError("the dataset has with_label=False; evaluation needs labelled images")
    extensions = _configured_extensions(cfg, section)

    data_root = Path(os.path.expanduser(cfg.get("data_root", "")))
    ann_file = cfg.get("ann_file", "")
    prefix = cfg.get("data_prefix", "")
    if isinstance(prefix, dict):
        prefix = prefix.get("img_path", "")
    split = cfg.get("split", "")
    if split and kind != "ImageNet":
        raise DatasetError(f"'split' is an ImageNet dataset option, not a {kind} one")
    if split:
        if split == "test":
            raise DatasetError("the ImageNet test split has no labels; evaluate on split='val'")
        if split not in ("train", "val"):
            raise DatasetError(f"split must be 'train', 'val' or 'test', got {split!r}")
        prefix = prefix or split
        if not ann_file and (data_root / "meta" / f"{split}.txt").is_file():
            ann_file = f"meta/{split}.txt"
    if not data_root.is_dir():
        raise DatasetError(f"the data root {data_root} does not exist (looked in "
                           f"{data_root.resolve()}); put the dataset there or set "
                           f"{section}.dataset.data_root")
    img_root = data_root / os.path.expanduser(prefix)
    classes = _configured_classes(cfg, section)
    if kind == "ImageNet":
        if classes is not None:
            raise DatasetError("an ImageNet dataset has the ImageNet-1k class names; drop "
                               f"'classes' or set {section}.dataset.type=CustomDataset")
        classes = imagenet_classes()
    if ann_file:
        return AnnotatedImageDataset(data_root / os.path.expanduser(ann_file), img_root, transform,
                                     classes, num_classes, section)
    return ClassFolderDataset(img_root, transform, classes if kind == "CustomDataset" else None,
                              num_classes, imagenet_synsets=kind == "ImageNet", section=section,
                              extensions=extensions)


def _stored_dataset(cfg: dict, transform: Transform, num_classes: int | None,
                    section: str) -> LabelledImageDataset:
    """A ``WebDataset`` section (``urls``, ``image_key``, ``label_key``) or an ``HFDataset`` one
    (``path``, ``split``, ``image_column``, ``label_column``); relative paths join ``data_root``."""
    kind = cfg["type"]
    cfg = {key: value for key, value in cfg.items() if value not in ("", None)}  # cleared by --cfg-options
    options = {"WebDataset": {"urls", "image_key", "label_key"},
               "HFDataset": {"path", "split", "image_column", "label_column"}}[kind]
    unknown = sorted(set(cfg) - options - _OTHER_KEYS - {"data_root", "classes", "metainfo"})
    if unknown:
        raise DatasetError(f"{section}.dataset (type {kind}) has options it does not take: {unknown}; "
                           f"its options are {sorted(options | {'data_root', 'classes'})}")
    root = os.path.expanduser(cfg.get("data_root", ""))
    if kind == "WebDataset":
        if not cfg.get("urls"):
            raise DatasetError(f"{section}.dataset needs urls: the shard pattern, e.g. 'train-{{0000..0099}}.tar'")
        urls = os.path.join(root, os.path.expanduser(cfg["urls"]))
        keys = cfg.get("image_key", DEFAULT_IMAGE_KEYS)
        samples = webdataset_samples(urls, (keys,) if isinstance(keys, str) else tuple(keys),
                                     cfg.get("label_key", DEFAULT_LABEL_KEY))
    else:
        if not cfg.get("path"):
            raise DatasetError(f"{section}.dataset needs path: a saved dataset folder or a dataset name")
        local = os.path.join(root, os.path.expanduser(cfg["path"]))
        samples = hf_samples(local if os.path.exists(local) else cfg["path"], cfg.get("split"),
                             cfg.get("image_column", "image"), cfg.get("label_column", "label"))
    return stored_dataset(samples, transform, _configured_classes(cfg, section), num_classes, section)


def stored_dataset(samples: StoredSamples, transform: Transform, classes: list[str] | None = None,
                   num_classes: int | None = None, section: str = "the dataset") -> LabelledImageDataset:
    """A labelled dataset of stored images; every sample must have a class."""
    unlabelled = [str(image) for image, label in samples.pairs() if label == NO_LABEL]
    if unlabelled:
        raise DatasetError(f"{len(unlabelled)} sample(s) of {samples.source} have no class, the first "
                           f"{unlabelled[0]}; give every sample one (label_key / label_column)")
    return LabelledImageDataset(list(samples.pairs()), transform, classes or samples.classes, num_classes,
                                f"{section} ({samples.source})")


def _configured_extensions(cfg: dict, section: str) -> tuple[str, ...]:
    """mmpretrain's ``extensions`` (any of :data:`IMAGE_EXTENSIONS`, dot and case optional)."""
    given = cfg.get("extensions", IMAGE_EXTENSIONS)
    if isinstance(given, str):
        given = [given]
    extensions = tuple("." + str(ext).lower().lstrip(".") for ext in given)
    unknown = sorted(set(extensions) - set(IMAGE_EXTENSIONS))
    if not extensions or unknown:
        raise DatasetError(f"{section}.dataset.extensions {list(given)}: the images this library reads have "
                           f"the extensions {list(IMAGE_EXTENSIONS)}; list some of those, or remove the option")
    return extensions


def _configured_classes(cfg: dict, section: str) -> list[str] | None:
    classes = cfg.get("classes")
    metainfo = cfg.get("metainfo") or {}
    unknown = sorted(set(metainfo) - {"classes"})
    if unknown:
        raise DatasetError(f"{section}.dataset.metainfo keys {unknown} are not supported; "
                           "only 'classes' is")
    if classes is not None and "classes" in metainfo:
        raise DatasetError("give the class names once: 'classes' or 'metainfo.classes'")
    classes = classes if classes is not None else metainfo.get("classes")
    if isinstance(classes, str):
        path = Path(os.path.expanduser(classes))
        if not path.is_file():
            raise DatasetError(f"the class-name file {path} does not exist")
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return None if classes is None else [str(c) for c in classes]
