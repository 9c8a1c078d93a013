"""Where the model's input lies in the original image, so that maps computed on the input (class
activation maps, attention) are drawn on the part of the photo the model actually saw.

The test pipeline resizes the short edge and centre-crops (:mod:`davit.data.transforms`); the
crop is a box of the original image, and only that box maps onto the input. Florence-2's
``exact_size`` preprocessing stretches the whole image instead: the box is then the image.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..checkpoint.card import Preprocessing
from ..data.transforms import short_edge_size
from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class InputRegion:
    """The box of the original image (in its pixels; right and bottom exclusive) that the model's
    input of ``input_size`` (height, width) covers."""

    left: float
    top: float
    right: float
    bottom: float
    input_size: tuple[int, int]

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The box rounded to whole pixels, for PIL."""
        return round(self.left), round(self.top), round(self.right), round(self.bottom)

    def to_input(self, x: float, y: float) -> tuple[float, float]:
        """The input coordinates (column, row) of the original pixel (x, y)."""
        height, width = self.input_size
        return ((x - self.left) * width / (self.right - self.left),
                (y - self.top) * height / (self.bottom - self.top))

    def to_image(self, column: float, row: float) -> tuple[float, float]:
        """The original coordinates (x, y) of the input point (column, row)."""
        height, width = self.input_size
        return (self.left + column * (self.right - self.left) / width,
                self.top + row * (self.bottom - self.top) / height)

    def check_pixel(self, x: float, y: float, image_size: tuple[int, int]) -> None:
        """Refuse a pixel outside the image (``image_size`` is PIL's (width, height)) or outside
        the part of it the model sees."""
        width, height = image_size
        if not (0 <= x < width and 0 <= y < height):
            raise InvalidArgumentError(f"pixel ({x:g}, {y:g}) is outside the {width}x{height} image; pass "
                                       f"--pixel X Y with 0 <= X < {width} and 0 <= Y < {height}")
        left, top, right, bottom = self.box
        if not (self.left <= x < self.right and self.top <= y < self.bottom):
            raise InvalidArgumentError(f"pixel ({x:g}, {y:g}) is outside the centre crop the model sees "
                                       f"(x {left}..{right - 1}, y {top}..{bottom - 1}); pick a pixel inside it")


def input_region(image_size: tuple[int, int], preprocessing: Preprocessing) -> InputRegion:
    """The region of an image of PIL size ``image_size`` (width, height) that ``preprocessing``
    turns into the model's input, by the same arithmetic as :mod:`davit.data.transforms`."""
    width, height = image_size
    if preprocessing.exact_size is not None:
        return InputRegion(0.0, 0.0, float(width), float(height), preprocessing.exact_size)
    resized_w, resized_h = short_edge_size(width, height, preprocessing.resize_edge)
    crop_w, crop_h = min(preprocessing.crop_size, resized_w), min(preprocessing.crop_size, resized_h)
    left, top = round((resized_w - crop_w) / 2.0), round((resized_h - crop_h) / 2.0)
    scale_x, scale_y = width / resized_w, height / resized_h
    return InputRegion(left * scale_x, top * scale_y, (left + crop_w) * scale_x, (top + crop_h) * scale_y,
                       (crop_h, crop_w))


def stage_token(region: InputRegion, x: float, y: float, grid: tuple[int, int], stride: int) -> tuple[int, int]:
    """The (row, column) of the token of a stage's ``grid`` (rows, columns) that covers the
    original pixel (x, y); ``stride`` is the stage's input pixels per token (the product of the
    patch-embedding strides up to it). Patch embeddings pad right and bottom, so token i starts at
    input pixel ``i * stride`` (give or take the convolution's own padding)."""
    column, row = region.to_input(x, y)
    rows, columns = grid
    if rows < 1 or columns < 1 or stride < 1:
        raise InvalidArgumentError(f"a token grid needs rows, columns and a stride of at least 1, got {grid}, {stride}")
    return min(int(row // stride), rows - 1), min(int(column // stride), columns - 1)
