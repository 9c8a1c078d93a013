"""Turning image files, PIL images and numpy arrays into RGB PIL images."""

import io
import os
import re
import warnings
from pathlib import Path
from typing import BinaryIO, Protocol, TypeAlias, runtime_checkable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageLoadError


@runtime_checkable
class StoredImage(Protocol):
    """An encoded image kept inside another file (a tar shard's member, a dataset's row), read on
    demand; ``str()`` of it names it in messages and records."""

    def read(self) -> bytes:
        """The image file's bytes; raises :class:`ImageLoadError` when they cannot be read."""
        ...


class EncodedImage:
    """An image file's bytes held in memory (a request body, a column of a batch), read as a file is."""

    def __init__(self, data: bytes, name: str = "the encoded image") -> None:
        self.data, self.name = data, name

    def read(self) -> bytes:
        return self.data

    def __str__(self) -> str:
        return self.name


ImageSource: TypeAlias = str | os.PathLike[str] | Image.Image | np.ndarray | StoredImage



def load_image(source: ImageSource) -> Image.Image:
    """Load ``source`` as a fully decoded RGB image that holds no open file.

    ``source`` is a path to an image file, a :class:`StoredImage` (an image inside a webdataset
    shard or a Hugging Face dataset), a PIL image, or a uint8 numpy array:
    HxWx3 (RGB; note that mmpretrain takes arrays as BGR), HxW (grey) or HxWx4
    (RGBA). Files and PIL images are turned upright by their EXIF orientation,
    as mmpretrain's OpenCV loading does. Alpha is dropped, not composited,
    again as OpenCV does. 16-bit grey (and Pillow's 32-bit mode ``I``, which
    holds 16-bit data in practice) keeps the high byte (``>> 8``, after
    clipping ``I`` to 0..65535); float grey (``F``) is taken as 0..255.

    Truncated files are refused (unless the process has set Pillow's
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``: that process-wide choice is the user's,
    and this library never toggles it), and so are files over
    ``PIL.Image.MAX_IMAGE_PIXELS`` and anything but a regular file (a FIFO, socket
    or device is never opened: reading one could block forever). Raises
    :class:`ImageLoadError`.
    """
    if isinstance(source, (str, os.PathLike)):
        return _load_file(Path(source))
    if isinstance(source, Image.Image):
        return _to_rgb(source, getattr(source, "filename", "") or "the given PIL image")
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, StoredImage):
        return _decode(io.BytesIO(source.read()), str(source))
    raise ImageLoadError(
        f"cannot load an image from an object of type {type(source).__name__}; pass a file path, "
        "a stored image, a PIL image or an HxWx3 uint8 numpy array"
    )


def _load_file(path: Path) -> Image.Image:
    """Decode the image file at ``path``."""
    if not path.exists():
        raise ImageLoadError(f"{path} does not exist; check the image path")
    if path.is_dir():
        raise ImageLoadError(f"{path} is a directory; pass the path of an image file")
    if not path.is_file():
        raise ImageLoadError(f"{path} is not a regular file (a FIFO, socket or device) and is not opened; "
                             "pass image files")
    with open(path, "rb") as fp:
        return _decode(fp, str(path))


def _decode(fp: BinaryIO, name: str) -> Image.Image:
    """Decode the encoded image ``fp`` holds (``name`` says which image it is in messages)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as image:
                return _to_rgb(image, name)
    except UnidentifiedImageError:
        raise ImageLoadError(
            f"{name} is not an image file Pillow can read; pass a JPEG, PNG or other image file"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{found[1]} pixels" if found else "too many pixels"
        raise ImageLoadError(
            f"{name} has {size}, over the limit PIL.Image.MAX_IMAGE_PIXELS = "
            f"{Image.MAX_IMAGE_PIXELS} pixels, and is refused as a possible decompression "
            "bomb; if you trust this file, raise PIL.Image.MAX_IMAGE_PIXELS (or set it to "
            "None) and load it again"
        ) from None
    except OSError as err:
        raise ImageLoadError(f"cannot read {name}: {err}") from err


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Decode ``image`` fully and return an upright RGB copy of it."""
    try:
        image.load()
    except (OSError, SyntaxError) as err:
        raise ImageLoadError(
            f"{name} is truncated or corrupt ({err}); re-download or re-export the image"
        ) from None
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "I" or mode.startswith("I;16"):
        values = np.asarray(image)
        if mode == "I":
            values = values.clip(0, 65535)
        image = Image.fromarray((values >> 8).astype(np.uint8))
    elif mode == "F":
        image = image.convert("L")
    elif mode in ("P", "PA"):
        image = image.convert("RGBA")
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise ImageLoadError(f"{name}: cannot convert {mode} pixels to RGB ({err})") from None


def _from_array(array: np.ndarray) -> Image.Image:
    """An RGB image from a uint8 HxWx3, HxW or HxWx4 array."""
    shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    if array.dtype != np.uint8 or not shape_ok or array.size == 0:
        raise ImageLoadError(
            f"expected an HxWx3 uint8 RGB array (HxW grey and HxWx4 RGBA are accepted too), "
            f"got shape {array.shape} and dtype {array.dtype}; for floats in [0, 1] pass "
            "(array * 255).round().astype(numpy.uint8)"
        )
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
