"""The model card's preprocessing as part of the model, so that an exported model takes a photo's
raw pixels (uint8 RGB, (N, H, W, 3) of any H and W) and returns class probabilities.

:class:`WithPreprocessing` repeats the test pipeline of :mod:`davit.data.transforms` in tensor
operations that every exporter can trace with a symbolic image size: the short edge resized to
``resize_edge`` with the long one truncated as mmpretrain's ``ResizeEdge`` does (``size * long //
short``, with no branch on which side is short), the centre crop at the same offsets (halves
rounded to even, in integer arithmetic), then ``(x - mean) / std``, the model and a softmax.

The resize is Pillow's own algorithm written as two matrix products rather than
``torch.nn.functional.interpolate(..., antialias=True)``: that one exports to ONNX's ``Resize``
with ``antialias``, which onnxruntime runs close to Pillow but OpenVINO runs up to 89 levels of
255 away from it, and OpenVINO's PyTorch frontend does not convert it at all. Each output pixel
is Pillow's weighted sum of the input pixels under the filter (bilinear, bicubic with a = -0.5,
hamming, lanczos; widened by the scale when shrinking; normalised), computed only for the rows
and columns the crop keeps, so the model sees a static size; the two passes go in Pillow's order
and clip to 0..255 as Pillow does. Pillow also rounds each pass to integers; this module does
not, since a rounding would make the output jump a level wherever two runtimes' float
arithmetic differs across a half, and the export could not match PyTorch to 1e-4. On the demo
photos the result is within 1.2 levels of Pillow's pixels, 0.3 on average (the rounding it
leaves out), and the exported model's top-5 is :func:`davit.inference_model`'s
(``tests/export/test_preprocessing.py`` checks both). The cost is a dense product over every
input row and column: about 2 x 3 x H x W x crop multiply-adds (0.3 GFLOP for a 600 x 400 photo,
16 for 12 megapixels), so shrink very large photos first.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..checkpoint.card import Preprocessing
from ..errors import InvalidArgumentError


def _bilinear(x: Tensor) -> Tensor:
    return (1 - x.abs()).clamp(min=0)


def _bicubic(x: Tensor) -> Tensor:
    a = -0.5  # Pillow's coefficient
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _hamming(x: Tensor) -> Tensor:
    x = x.abs()
    return torch.where(x < 1, torch.sinc(x) * (0.54 + 0.46 * torch.cos(math.pi * x)), torch.zeros_like(x))


def _lanczos(x: Tensor) -> Tensor:
    return torch.where(x.abs() < 3, torch.sinc(x) * torch.sinc(x / 3), torch.zeros_like(x))


# Pillow's smooth filters (nearest and box fall on exact ties that float32 decides otherwise
# than Pillow's doubles, moving whole pixels: refused)
_FILTERS: dict[str, Callable[[Tensor], Tensor]] = {
    "bilinear": _bilinear, "bicubic": _bicubic, "hamming": _hamming, "lanczos": _lanczos}


class WithPreprocessing(nn.Module):
    """``model`` fed raw pixels: uint8 (N, H, W, 3) or one (H, W, 3) image in, softmax class
    probabilities ((N, classes) or (classes,)) out, preprocessed as ``preprocessing`` says."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        if preprocessing.interpolation not in _FILTERS:
            raise InvalidArgumentError(
                f"the model card's {preprocessing.interpolation!r} resampling cannot be exported to "
                f"match Pillow (only {', '.join(_FILTERS)}); export without --with-preprocessing and "
                "preprocess the images before the model")
        if preprocessing.exact_size is None and preprocessing.resize_edge < preprocessing.crop_size:
            raise InvalidArgumentError(
                f"the model card resizes to {preprocessing.resize_edge} and crops "
                f"{preprocessing.crop_size}, more than the resized image; export without "
                "--with-preprocessing or fix the card's preprocessing")
        self.model = model
        self.preprocessing = preprocessing
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: Tensor) -> Tensor:
        single = pixels.dim() == 3
        batch = pixels.unsqueeze(0) if single else pixels
        images = self.resize_and_crop(batch.permute(0, 3, 1, 2).float())
        probabilities = self.model((images - self.mean) / self.std).softmax(dim=-1)
        return probabilities[0] if single else probabilities

    def resize_and_crop(self, images: Tensor) -> Tensor:
        """float (N, 3, H, W) pixels on the 0..255 scale -> the model's input size, as integers
        0..255 in float32 (not normalised)."""
        pre = self.preprocessing
        height, width = images.shape[-2], images.shape[-1]
        # the sizes as float32 tensors (exact integers: every quotient floored below is at least
        # 1/short away from the next integer, far more than float32's rounding there), so that
        # no exporter meets integer arithmetic on a symbolic size
        one = torch.ones((), device=images.device)
        in_height, in_width = one * height, one * width
        if pre.exact_size is not None:
            out_height, out_width = one * pre.exact_size[0], one * pre.exact_size[1]
            top = left = one * 0
            crop_height, crop_width = pre.exact_size
        else:
            short = torch.minimum(in_height, in_width)
            out_height = (pre.resize_edge * in_height / short).floor()
            out_width = (pre.resize_edge * in_width / short).floor()
            top, left = _half_to_even(out_height - pre.crop_size), _half_to_even(out_width - pre.crop_size)
            crop_height = crop_width = pre.crop_size
        columns = self.weights(width, in_width / out_width, left, crop_width)  # (crop_width, W)
        rows = self.weights(height, in_height / out_height, top, crop_height)  # (crop_height, H)
        width_first = _to_levels(rows @ _to_levels(images @ columns.T))
        if pre.exact_size is None:  # both sides shrink or both grow: Pillow resamples the width first
            return width_first
        # Pillow resamples the height first when it shrinks and the width grows
        height_first = _to_levels(_to_levels(rows @ images) @ columns.T)
        shrinks_height_grows_width = (in_height > out_height) & (in_width < out_width)
        return torch.where(shrinks_height_grows_width, height_first, width_first)

    def weights(self, size: int, scale: Tensor, start: Tensor, count: int) -> Tensor:
        """(count, size) matrix taking a side of ``size`` pixels (an int or a symbolic size) to
        the output pixels ``start`` to ``start + count`` of a resize by 1 / ``scale``: Pillow's
        coefficients."""
        outputs = torch.arange(count, device=scale.device, dtype=scale.dtype) + start
        inputs = torch.arange(size, device=scale.device, dtype=scale.dtype)
        centres = (outputs + 0.5) * scale
        widen = scale.clamp(min=1.0)  # shrinking widens the filter: Pillow's antialiasing
        taps = _FILTERS[self.preprocessing.interpolation]((inputs + 0.5 - centres.unsqueeze(1)) / widen)
        return taps / taps.sum(dim=1, keepdim=True)


def _to_levels(values: Tensor) -> Tensor:
    """Clip to 0..255 as Pillow does after each pass. Pillow also rounds to integers there; doing
    so here would make the output jump a level wherever two runtimes' float rounding differ
    across a half, so the export keeps the unrounded value (at most about half a level from
    Pillow's after each pass)."""
    return values.clamp(0, 255)


def _half_to_even(difference: Tensor) -> Tensor:
    """``round(difference / 2)`` with halves to even (Python's round, as the crop does) of an
    integer held in a float tensor."""
    return ((difference + torch.remainder((difference / 2).floor(), 2)) / 2).floor()
