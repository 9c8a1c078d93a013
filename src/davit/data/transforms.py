"""The test-time pipeline of mmpretrain's DaViT configs, on PIL images.

mmpretrain runs ``ResizeEdge(scale=236, edge='short', backend='pillow',
interpolation='bicubic')``, ``CenterCrop(crop_size=224)`` and then normalises
RGB values in 0..255 with the ImageNet mean and std. The functions below repeat
its size and offset arithmetic exactly and let Pillow do the resampling, so the
crops match mmpretrain's pixel for pixel. Florence-2's processor instead resizes both sides to
a fixed (height, width) and does not crop (``exact_size``).
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from ..errors import ImageLoadError, InvalidArgumentError
from .images import ImageSource, StoredImage, load_image

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

# The most pixels the resized intermediate (before the crop) may have: 64 megapixels, about 192 MB
# of RGB. Checked from the input's size before resizing, so an extreme aspect ratio (1 x 60000) or an
# absurd resize_edge is refused with a one-line error instead of allocating gigabytes.
RESIZED_PIXEL_BUDGET = 64_000_000

class _HasSizes(Protocol):
    @property
    def resize_edge(self) -> int: ...

    @property
    def exact_size(self) -> tuple[int, int] | None: ...


_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
    "hamming": Image.Resampling.HAMMING,
}


def _resampling(interpolation: str) -> Image.Resampling:
    """Pillow's filter named ``interpolation``: nearest, bilinear, bicubic, box, lanczos, hamming."""
    if interpolation not in _RESAMPLING:
        raise InvalidArgumentError(f"interpolation must be one of {sorted(_RESAMPLING)}, got {interpolation!r}")
    return _RESAMPLING[interpolation]


def short_edge_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) that mmpretrain's ``ResizeEdge(scale=size, edge='short')`` picks.

    The short side becomes ``size`` and the long side ``int(size * long / short)``,
    truncated (the same rule as ``torchvision.transforms.Resize(size)``, and not
    mmcv's rounding ``rescale_size``, which ResizeEdge does not use).
    """
    if width < height:
        return size, int(size * height / width)
    return int(size * width / height), size


def resized_size(preprocessing: _HasSizes, width: int, height: int, name: str = "the image") -> tuple[int, int]:
    """(width, height) that ``preprocessing`` (a card's Preprocessing or a TestTransform) resizes a
    ``width`` x ``height`` image to, refused with :class:`ImageLoadError` naming ``name`` when over
    :data:`RESIZED_PIXEL_BUDGET`, so callers (the server, from a header) can check before decoding."""
    exact = getattr(preprocessing, "exact_size", None)
    size = (exact[1], exact[0]) if exact is not None else short_edge_size(width, height, preprocessing.resize_edge)
    _check_budget(size, name)
    return size


def _check_budget(size: tuple[int, int], name: str) -> None:
    """Refuse a resize to ``size`` (width, height) over :data:`RESIZED_PIXEL_BUDGET`."""
    if size[0] * size[1] > RESIZED_PIXEL_BUDGET:
        raise ImageLoadError(
            f"{name} would be resized to {size[0]} x {size[1]} = {size[0] * size[1]} pixels, over the "
            f"limit of {RESIZED_PIXEL_BUDGET} pixels (davit.data.transforms.RESIZED_PIXEL_BUDGET); "
            "crop or pad the image to a less extreme aspect ratio, or use a smaller resize_edge")


def resize_short_edge(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize ``img`` so that its short side is ``size``, with Pillow's resampling.

    ``interpolation`` is one of nearest, bilinear, bicubic, box, lanczos, hamming.
    """
    target = short_edge_size(img.width, img.height, size)
    _check_budget(target, getattr(img, "filename", "") or "the image")
    return img.resize(target, _resampling(interpolation))


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The central ``size`` x ``size`` region, as mmpretrain's ``CenterCrop(crop_size=size)``.

    Offsets are ``int(round((side - size) / 2))``, so halves round to even. Like
    mmpretrain's default ``auto_pad=False``, a side shorter than ``size`` is kept
    whole instead of padded, and the result is then smaller than requested.
    """
    crop_w, crop_h = min(size, img.width), min(size, img.height)
    left = round((img.width - crop_w) / 2.0)
    top = round((img.height - crop_h) / 2.0)
    return img.crop((left, top, left + crop_w, top + crop_h))


def to_uint8_crop(
    img: ImageSource, resize_edge: int = 236, crop_size: int = 224, interpolation: str = "bicubic"
) -> torch.Tensor:
    """The RGB crop before normalisation: a uint8 tensor of shape (3, crop_size, crop_size).

    ``img`` is anything :func:`~davit.data.load_image` accepts.
    """
    loaded = load_image(img)
    name = os.fspath(img) if isinstance(img, (str, os.PathLike)) else "the image"
    target = short_edge_size(loaded.width, loaded.height, resize_edge)
    _check_budget(target, str(name))
    resized = loaded.resize(target, _resampling(interpolation))
    return pil_to_tensor(center_crop(resized, crop_size))


def to_uint8_resized(img: ImageSource, size: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """``img`` resized to exactly ``size`` (height, width), aspect ratio not kept, as a uint8
    (3, height, width) tensor: Florence-2's processor, which neither keeps the ratio nor crops."""
    height, width = size
    _check_budget((width, height), str(os.fspath(img)) if isinstance(img, (str, os.PathLike)) else "the image")
    return pil_to_tensor(load_image(img).resize((width, height), _resampling(interpolation)))


@dataclass(frozen=True)
class TestTransform:
    """Image source -> normalised float32 (3, crop_size, crop_size) tensor.

    Resizes the short edge to ``resize_edge``, centre-crops ``crop_size`` and
    computes ``(x - mean) / std`` on RGB values in 0..255. With ``exact_size``
    (height, width), resizes both sides to it instead and does not crop
    (``resize_edge`` and ``crop_size`` are then unused).
    """

    __test__ = False  # keeps pytest from collecting this class

    resize_edge: int = 236
    crop_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    exact_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.exact_size is not None:
            if len(self.exact_size) != 2 or not all(
                    isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in self.exact_size):
                raise InvalidArgumentError(f"exact_size must be two positive integers (height, width), "
                                           f"got {self.exact_size!r}")
            object.__setattr__(self, "exact_size", tuple(self.exact_size))
        _resampling(self.interpolation)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise InvalidArgumentError("mean and std need one value per RGB channel")

    def __call__(self, img: ImageSource) -> torch.Tensor:
        if self.exact_size is not None:
            pixels = to_uint8_resized(img, self.exact_size, self.interpolation).float()
        else:
            pixels = to_uint8_crop(img, self.resize_edge, self.crop_size, self.interpolation).float()
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (pixels - mean) / std


def build_test_transform(
    resize_edge: int = 236,
    crop_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bicubic",
    exact_size: tuple[int, int] | None = None,
) -> TestTransform:
    """The DaViT test-time transform; the defaults are those of mmpretrain's configs.
    ``exact_size`` (height, width) resizes to it without crop instead (Florence-2)."""
    if len(mean) != 3 or len(std) != 3:
        raise InvalidArgumentError(f"mean and std need one value per RGB channel, got {list(mean)} and {list(std)}")
    return TestTransform(resize_edge, crop_size, (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]),
                         interpolation, exact_size)


def preprocess(
    images: ImageSource | Sequence[ImageSource], transform: TestTransform | None = None
) -> torch.Tensor:
    """Load and transform images into a float32 batch, (N, 3, 224, 224) by default.

    ``images`` is a list of sources (or a single one) that
    :func:`~davit.data.load_image` accepts; ``transform`` defaults to
    :func:`build_test_transform`'s.
    """
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, StoredImage)):
        images = [images]
    images = list(images)
    if not images:
        raise InvalidArgumentError("preprocess needs at least one image")
    transform = transform or build_test_transform()
    return torch.stack([transform(image) for image in images])
