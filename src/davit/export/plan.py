"""What an export writes, the same for every format: the module, its input and output names, the
example it is traced with, its dynamic dimensions and the inputs the written file is checked on.

Why the traced example is not the requested size: torch.export specialises a dimension whose
example value is 1 (so a last stage of a single window per side fixes the image size, and the
symbolic reshapes of the window partition then take sympy minutes), and it traces the branch the
example takes (a size that needs no window padding drops the padding from the graph). A dynamic
export is therefore traced at the smallest size, at least ``input_size``, where every stage needs
window padding and has at least two windows per side; the graph then holds the general
computation, and it is checked at two sizes and two batch sizes.

A model with its preprocessing (:class:`.preprocessing.WithPreprocessing`) takes uint8 pixels of
any height and width (the batch and both sides are always dynamic) and the model inside always
sees the card's crop, so nothing of the above applies to it.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint.card import ModelCard, card_of
from ..data.images import ImageSource, load_image
from ..data.transforms import TestTransform, build_test_transform
from ..errors import InvalidArgumentError
from ..model import DaViTArch, DaViTClassifier, Florence2Encoder
from ..model.florence2 import MIN_SIDE  # the smallest side of a dynamic export (the stride)
from .preprocessing import WithPreprocessing

MAX_SIDE = 8192
MAX_BATCH = 4096
SIGNATURE_KEY = "davit_export"  # the file's metadata entry saying what goes in and comes out
OUTPUTS = ("logits", "probabilities", "features", "image_tokens")


@dataclass
class ExportPlan:
    """One export, whatever the format. ``checks`` are (what, input) pairs: random batches at the
    sizes the export must handle and the real images, as the exported model takes them."""

    module: nn.Module
    input_name: str
    output_name: str
    example: torch.Tensor
    dynamic_shapes: dict[str, dict[int, torch.export.Dim]] | None
    checks: list[tuple[str, torch.Tensor]]
    card: ModelCard | None
    dynamic_size: bool = False  # a model's height and width (not a with-preprocessing one's pixels)

    def signature(self, verified_atol: float | None) -> str:
        """What the written file takes and gives, as the JSON its metadata carries under
        :data:`SIGNATURE_KEY`, so that a reader (:mod:`davit.exported`) runs it without guessing:
        the input (``images``: normalised (N, 3, H, W) float32 at ``input_size``, any size when
        that is null; ``pixels``: uint8 (N, H, W, 3) of any size), the output's name and the
        tolerance to PyTorch it was verified to (None: not verified)."""
        fixed = self.input_name == "images" and not self.dynamic_size
        return json.dumps({"input": self.input_name, "output": self.output_name,
                           "input_size": list(self.example.shape[2:]) if fixed else None,
                           "verified_atol": verified_atol})

    @functools.cached_property
    def program(self) -> torch.export.ExportedProgram:
        """The module as a ``torch.export`` program, traced once: every format is written from it."""
        with torch.no_grad():
            if not self.dynamic_size:
                return torch.export.export(self.module, (self.example,), dynamic_shapes=self.dynamic_shapes)
            # traced as torch.onnx does: the window padding's shape arithmetic gives guards that
            # no symbolic size satisfies in general, kept as run-time checks instead of refused;
            # and a range that the trace narrows (a side of 32 leaves no padding) taken as
            # torch.export suggests
            shapes: Any = self.dynamic_shapes
            with torch.fx.experimental._config.patch(backed_size_oblivious=True):  # type: ignore[attr-defined]
                try:
                    return torch.export.export(self.module, (self.example,), dynamic_shapes=shapes,
                                               prefer_deferred_runtime_asserts_over_guards=True)
                except torch._dynamo.exc.UserError as error:
                    shapes = torch.export.dynamic_shapes.refine_dynamic_shapes_from_suggested_fixes(error.msg, shapes)
                return torch.export.export(self.module, (self.example,), dynamic_shapes=shapes,
                                           prefer_deferred_runtime_asserts_over_guards=True)


def plan_export(model: nn.Module, input_size: tuple[int, int] = (224, 224), dynamic_batch: bool = True,
                dynamic_size: bool = False, encode_image: bool = False, with_preprocessing: bool = False,
                check_images: Sequence[ImageSource] = ()) -> ExportPlan:
    """The plan for exporting ``model`` (see the module docstring); ``check_images`` are the real
    images (paths, PIL images or HxWx3 arrays) the export is checked on besides random ones."""
    model = model.eval().float().cpu()
    card = card_of(model) if isinstance(model, (DaViTClassifier, Florence2Encoder)) else None
    if with_preprocessing:
        return _with_preprocessing(model, card, encode_image, dynamic_batch, check_images)
    module, output = _graph(model, encode_image)
    trace_size = _trace_size(model, input_size) if dynamic_size else input_size
    dims: dict[int, torch.export.Dim] = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    if dynamic_size:
        dims |= {2: torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE),
                 3: torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)}
    generator = torch.Generator().manual_seed(0)
    checks = [(f"random {batch} x 3 x {height} x {width}",
               torch.randn(batch, 3, height, width, generator=generator))
              for batch, height, width in _random_checks(input_size, dynamic_batch, dynamic_size)]
    checks += [(what, images.expand(2 if not dynamic_batch else 1, -1, -1, -1)) for what, images in
               _preprocessed_images(card, input_size, dynamic_size, check_images)]
    return ExportPlan(module, "images", output, torch.randn(2, 3, *trace_size, generator=generator),
                      {"x": dims} if dims else None, checks, card, dynamic_size)


def _with_preprocessing(model: nn.Module, card: ModelCard | None, encode_image: bool, dynamic_batch: bool,
                        check_images: Sequence[ImageSource]) -> ExportPlan:
    """The plan of a classifier with its card's preprocessing: uint8 pixels of any size in, checked
    on random pixels of a portrait and a landscape size and on the real images' own pixels."""
    if encode_image or card is None or getattr(model, "head", None) is None:
        raise InvalidArgumentError("--with-preprocessing exports a classifier (pixels in, class "
                                   "probabilities out); export this model without it")
    module = WithPreprocessing(model, card.preprocessing).eval()
    dims = {1: torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE),
            2: torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    side = max(card.preprocessing.crop_size, card.preprocessing.resize_edge, MIN_SIDE)
    generator = torch.Generator().manual_seed(0)

    def pixels(batch: int, height: int, width: int) -> torch.Tensor:
        return torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=generator)

    batches = (1, 3) if dynamic_batch else (2, 2)
    checks = [(f"random pixels {batch} x {height} x {width} x 3", pixels(batch, height, width))
              for batch, height, width in [(batches[0], side * 3 // 2 + 1, side + 3),
                                           (batches[1], side, side * 4 // 3)]]
    checks += [(f"{_name(image)} (its pixels)", _pixels(image).expand(2 if not dynamic_batch else 1, -1, -1, -1))
               for image in check_images]
    return ExportPlan(module, "pixels", "probabilities", pixels(2, side + 17, side * 5 // 4 + 9),
                      {"pixels": dims}, checks, card)


class _EncodeImage(nn.Module):
    """``model.encode_image`` as a module's forward, for the exporter."""

    def __init__(self, model: Florence2Encoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)


def _graph(model: nn.Module, encode_image: bool) -> tuple[nn.Module, str]:
    """The module to export and its output's name."""
    if encode_image:
        if getattr(model, "projector", None) is None:
            raise InvalidArgumentError(
                f"encode_image exports a Florence-2 projector, which this {type(model).__name__} "
                "has not; export model(x) instead (no --encode-image)")
        return _EncodeImage(model).eval(), "image_tokens"  # type: ignore[arg-type]
    if isinstance(model, Florence2Encoder) and model.head is None:
        return model, "features"
    return model, "logits"


def _trace_size(model: nn.Module, input_size: tuple[int, int]) -> tuple[int, int]:
    """The (H, W) a dynamic-size export is traced at (see the module docstring)."""
    backbone = getattr(model, "backbone", None)
    arch = getattr(backbone, "arch", None)
    if not isinstance(arch, DaViTArch):
        raise InvalidArgumentError("dynamic_size needs a DaViT model (one with model.backbone.arch)")
    same_padding = getattr(backbone, "semantics", "official") == "mmpretrain"
    return tuple(_general_side(arch, side, same_padding) for side in input_size)  # type: ignore[return-value]


def _general_side(arch: DaViTArch, side: int, same_padding: bool) -> int:
    """The smallest side >= ``side`` at which every stage pads its windows (and every patch
    embedding that pads to its stride pads) and has at least two windows."""
    side = max(side, 32 * arch.window_size + 1)
    while not _pads_everywhere(arch, side, same_padding):
        side += 1
    return side


def _pads_everywhere(arch: DaViTArch, side: int, same_padding: bool) -> bool:
    ws = arch.window_size
    for i, (kernel, stride, padding) in enumerate(zip(arch.patch_kernels, arch.patch_strides,
                                                      arch.patch_paddings)):
        if arch.pad_to_stride and side % stride == 0:
            return False
        if arch.pad_to_stride or (same_padding and i == 0):
            side = -(-side // stride)
        else:
            side = (side + 2 * padding - kernel) // stride + 1
        if side % ws == 0 or side <= ws:
            return False
    return True


def _random_checks(input_size: tuple[int, int], dynamic_batch: bool,
                   dynamic_size: bool) -> list[tuple[int, int, int]]:
    """The (batch, H, W) of the random inputs the export is checked at."""
    height, width = input_size
    batches = (1, 3) if dynamic_batch else (2, 2)
    other = (max(MIN_SIDE, height * 3 // 4 + 5), max(MIN_SIDE, width * 5 // 4 + 3))
    return [(batches[0], height, width), (batches[1], *(other if dynamic_size else input_size))]


def input_transform(card: ModelCard | None, input_size: tuple[int, int], dynamic_size: bool = False) -> TestTransform:
    """The card's preprocessing, resizing to ``input_size`` instead of cropping when its crop would
    not fit a fixed-size export."""
    pre = card.preprocessing if card is not None else None
    transform = pre.transform() if pre is not None else build_test_transform()
    crop = transform.exact_size or (transform.crop_size, transform.crop_size)
    if dynamic_size or tuple(crop) == tuple(input_size):
        return transform
    return build_test_transform(transform.resize_edge, transform.crop_size, transform.mean, transform.std,
                                transform.interpolation, exact_size=(input_size[0], input_size[1]))


def _preprocessed_images(card: ModelCard | None, input_size: tuple[int, int], dynamic_size: bool,
                         images: Sequence[ImageSource]) -> list[tuple[str, torch.Tensor]]:
    """The real images as the exported model takes them (:func:`input_transform`)."""
    transform = input_transform(card, input_size, dynamic_size)
    return [(f"{_name(image)} (preprocessed)", transform(image).unsqueeze(0)) for image in images]


def _pixels(image: ImageSource) -> torch.Tensor:
    """An image's RGB pixels as a uint8 (1, H, W, 3) batch."""
    return torch.from_numpy(np.array(load_image(image), dtype=np.uint8)).unsqueeze(0)


def _name(image: ImageSource) -> str:
    return Path(image).name if isinstance(image, (str, Path)) else f"a {type(image).__name__} image"


def read_signature(meta: Mapping[str, str], where: str) -> dict[str, Any] | None:
    """The signature a file's metadata holds (None when it has none: a file of an older version),
    checked to be one this library wrote."""
    text = meta.get(SIGNATURE_KEY)
    if text is None:
        return None
    try:
        signature = json.loads(text)
    except json.JSONDecodeError:
        signature = None
    if not isinstance(signature, dict) or signature.get("input") not in ("images", "pixels") \
            or signature.get("output") not in OUTPUTS:
        raise InvalidArgumentError(f"{where} carries an export signature ({SIGNATURE_KEY}) this version "
                                   "does not know; export the model again with this version's davit export")
    return signature
