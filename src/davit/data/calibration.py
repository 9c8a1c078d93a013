"""Images for int8 calibration and agreement checks: a folder of images read into preprocessed
(N, 3, H, W) batches, and the batches a caller gives in any of the shapes we accept."""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from ..errors import DatasetError, DavitError, InvalidArgumentError
from .datasets import image_files
from .images import StoredImage, load_image
from .sources import is_stored_source, stored_samples
from .transforms import TestTransform

logger = logging.getLogger("davit")


def folder_images(folder: str | Path, transform: TestTransform, batch_size: int = 64,
                  limit: int | None = None, what: str = "calibration") -> list[Tensor]:
    """The image files under ``folder`` (recursively, sorted; at most ``limit``), or the samples of
    a ``wds:`` / ``hf:`` source (:mod:`.sources`), preprocessed by ``transform`` into (N, 3, H, W)
    batches. An unreadable image is skipped with a warning; a folder without images raises
    :class:`DatasetError` (``what`` names the folder's role)."""
    root = Path(folder)
    images: Sequence[Path | StoredImage]
    if is_stored_source(str(folder)):
        images = list(stored_samples(str(folder)).images)[:limit]
    elif root.is_dir():
        images = [root / name for name in image_files(root)[:limit]]
    else:
        raise DatasetError(f"the {what} folder {root} does not exist; give a folder of images")
    tensors = []
    for image in tqdm(images, desc=f"reading {what} images", unit="img", leave=False):
        try:
            tensors.append(transform(load_image(image)))
        except DavitError as error:
            logger.warning("skipped an unreadable %s image: %s", what, error)
    if not tensors:
        raise DatasetError(f"the {what} folder {root} holds no readable images (.jpg, .png, ...); "
                           "give a folder with some of the images the model will see")
    return [torch.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]


def calibration_batches(calibration: Tensor | Iterable[Tensor] | None) -> list[Tensor]:
    """The calibration images as a list of (N, 3, H, W) float32 batches (a single batch, or an
    iterable of batches or of single (3, H, W) images)."""
    if calibration is None:
        return []
    items = [calibration] if isinstance(calibration, Tensor) else list(calibration)
    batches = [item.unsqueeze(0) if item.ndim == 3 else item for item in items]
    for batch in batches:
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise InvalidArgumentError(f"calibration images must be (N, 3, H, W) batches, got shape "
                                       f"{tuple(batch.shape)}")
    return [batch.float().cpu() for batch in batches]


CALIBRATION_LIMIT = 256  # int8: calibration images read at most (more change the ranges little)


def calibration_and_holdout(calibration: str | Path, holdout: str | Path | None,
                            transform: TestTransform) -> tuple[list[Tensor], list[Tensor] | None]:
    """``--int8``'s images: up to :data:`CALIBRATION_LIMIT` calibration images and every held-out
    one (None when no holdout is given), read with ``transform``."""
    calibrated = folder_images(calibration, transform, limit=CALIBRATION_LIMIT)
    return calibrated, folder_images(holdout, transform, what="holdout") if holdout else None
