"""Pictures for people: an image with its top-k classes written under it (mmpretrain's
``show_dir``), and a heat map laid over the part of an image the model saw.

Pictures are scaled so that their longest side is ``display_size`` pixels (digits of 32 pixels
grow to a readable size, photos of thousands of pixels shrink), then written as PNG.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.images import ImageSource, load_image
from ..errors import InvalidArgumentError, require
from .regions import InputRegion

DISPLAY_SIZE = 512  # default longest side of a saved picture, in pixels
_FONT_SIZE = 16
_LINE_HEIGHT = 22
_CORRECT, _WRONG, _TEXT = (0, 128, 0), (200, 0, 0), (0, 0, 0)


def fit(image: Image.Image, display_size: int) -> Image.Image:
    """``image`` scaled so that its longest side is ``display_size`` (0 keeps it as it is)."""
    if display_size < 0:
        raise InvalidArgumentError(f"display size must be 0 (keep) or a positive number of pixels, got {display_size}")
    if display_size == 0:
        return image
    scale = display_size / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 4 else Image.Resampling.LANCZOS  # keep tiny images crisp
    return image.resize(size, resample)


def with_caption(image: Image.Image, lines: Sequence[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    """``image`` above a white band holding ``lines`` (text, RGB colour), one per row."""
    font = ImageFont.load_default(size=_FONT_SIZE)
    width = max([image.width, *(round(font.getlength(text)) + 12 for text, _ in lines)])
    canvas = Image.new("RGB", (width, image.height + _LINE_HEIGHT * len(lines) + 8), "white")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, (text, colour) in enumerate(lines):
        draw.text((6, image.height + 4 + row * _LINE_HEIGHT), text, fill=colour, font=font)
    return canvas


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 colours of a (H, W) map of values in [0, 1] (matplotlib's ``jet``)."""
    require("matplotlib", "vis", "drawing heat maps")
    from matplotlib import colormaps

    return (colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3] * 255).round().astype(np.uint8)


def heatmap_overlay(image: Image.Image, heat: np.ndarray, region: InputRegion,
                    opacity: float = 0.5) -> Image.Image:
    """``image`` with ``heat`` (a map over the model's input, values in [0, 1]) blended onto
    ``region``, the box of the image the input was cut from; outside it (what a centre crop left
    out) the image is dimmed, as the model did not see it."""
    if heat.ndim != 2:
        raise InvalidArgumentError(f"a heat map has two dimensions, got shape {heat.shape}")
    left, top, right, bottom = region.box
    size = (max(1, right - left), max(1, bottom - top))
    scaled = np.asarray(Image.fromarray(heat.astype(np.float32)).resize(size, Image.Resampling.BILINEAR))
    colours = Image.fromarray(heat_colours(scaled))
    out = Image.eval(image, lambda value: value * 2 // 5)  # dimmed: what the model did not see
    seen = image.crop((left, top, right, bottom))
    out.paste(Image.blend(seen, colours.resize(seen.size), opacity), (left, top))
    return out


@dataclass(frozen=True)
class ClassScore:
    """One of an image's best classes: its index, probability and name (when the model has names)."""

    label: int
    score: float
    name: str | None = None

    def describe(self) -> str:
        return describe_class(self.label, self.name)


def describe_class(label: int, name: str | None) -> str:
    """``name (label)``, or ``class label`` without a name or when the name is the label."""
    return f"{name} ({label})" if name and name != str(label) else f"class {label}"


def prediction_picture(image: ImageSource, topk: Sequence[ClassScore],
                       ground_truth: tuple[int, str | None] | None = None,
                       display_size: int = DISPLAY_SIZE) -> Image.Image:
    """The image with its top-k classes and scores written under it and, when known, the true
    class (its label and name; green when the top-1 class is right, red when not)."""
    lines = [(f"{rank}. {item.describe()}  {item.score:.3f}", _TEXT) for rank, item in enumerate(topk, 1)]
    if ground_truth is not None:
        right = bool(topk) and topk[0].label == ground_truth[0]
        lines.append((f"ground truth: {describe_class(*ground_truth)}", _CORRECT if right else _WRONG))
    return with_caption(fit(load_image(image), display_size), lines)


def picture_stem(image: ImageSource) -> str:
    """A file-name stem for a picture of ``image``: a file's stem, a stored image's ``SHARD_KEY``."""
    if isinstance(image, (str, Path)):
        return re.sub(r"[^\w.-]", "_", Path(image).stem)
    return re.sub(r"[^\w.-]", "_", Path(str(image)).name)


class PredictionPictures:
    """Writes each image with its predictions drawn into ``folder`` as ``<file stem>.png``
    (``<stem>_1.png``... when several inputs share a stem), as mmpretrain's ``show_dir``."""

    def __init__(self, folder: str | Path, display_size: int = DISPLAY_SIZE) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.display_size = display_size
        self._used: set[str] = set()

    def save(self, path: ImageSource, topk: Sequence[ClassScore],
             ground_truth: tuple[int, str | None] | None = None) -> Path:
        """Draw the image at ``path`` (or a stored image: ``SHARD#KEY`` is saved as
        ``SHARD_KEY.png``); returns the picture's path."""
        picture = prediction_picture(path, topk, ground_truth, self.display_size)
        stem, number = picture_stem(path), 0
        name = f"{stem}.png"
        while name in self._used:
            number += 1
            name = f"{stem}_{number}.png"
        self._used.add(name)
        target = self.folder / name
        picture.save(target)
        return target
