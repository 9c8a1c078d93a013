"""Export a DaViT classifier or Florence-2 encoder to ONNX for deployment, checked with onnxruntime.

A classifier exports ``model(x)`` (``logits``); a Florence-2 encoder its tower, ``model(x)``
(``features``, the last-stage map), or with ``encode_image=True`` its projected image tokens
(``image_tokens``). The batch size is dynamic; with ``dynamic_size`` the height and width are too
(the window padding is part of the graph).

Why the traced example is not the requested size: torch.export specialises a dimension whose
example value is 1 (so a last stage of a single window per side fixes the image size, and the
symbolic reshapes of the window partition then take sympy minutes), and it traces the branch the
example takes (a size that needs no window padding drops the padding from the graph). A dynamic
export is therefore traced at the smallest size, at least ``input_size``, where every stage needs
window padding and has at least two windows per side; the graph then holds the general
computation, and it is checked at two sizes and two batch sizes.

The file carries the model card (architecture, class names, preprocessing) as the JSON string
``davit_card`` of its ``metadata_props``, so that a deployment can read the classes and the
preprocessing from the model itself (:func:`read_onnx_card`).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from .checkpoint.card import CARD_KEY, ModelCard, card_from_metadata, card_of
from .checkpoint.io import replacing
from .errors import CheckpointError, ExportError, InvalidArgumentError, require
from .model import DaViTArch, DaViTClassifier, Florence2Encoder
from .model.florence2 import MIN_SIDE  # the smallest side of a dynamic export (the stride)

logger = logging.getLogger("davit")

# The exporter's own loggers: hundreds of INFO lines per export (initializer deduplication,
# rewrite rules), noise to anyone but a developer of the exporter.
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


def export_onnx(model: nn.Module, path: str | Path, input_size: tuple[int, int] = (224, 224),
                dynamic_batch: bool = True, verify: bool = True, atol: float = 1e-4,
                quiet: bool = True, dynamic_size: bool = False, encode_image: bool = False) -> Path:
    """Write ``model`` (a (N, 3, H, W) float32 batch in) as an ONNX file.

    The output is ``model(x)`` (logits, or a Florence-2 tower's last-stage map), or
    ``model.encode_image(x)`` with ``encode_image``. The batch size is dynamic unless
    ``dynamic_batch=False``; the spatial size is ``input_size`` unless ``dynamic_size``. With
    ``verify`` the file is run with onnxruntime (two batch sizes; two image sizes when dynamic) and
    must match PyTorch within ``atol`` relative to the largest output value. The model's card goes
    into the file's metadata. ``quiet`` holds back the exporter's INFO logs.
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise InvalidArgumentError(f"the output file must end in .onnx, got {path}")
    require("onnxscript", "export", "ONNX export")  # the exporter builds the graph with onnxscript
    if verify:
        require("onnxruntime", "export", "checking the export (skipped with --no-verify)")
    model = model.eval().float().cpu()
    graph, output = _graph(model, encode_image)
    trace_size = _trace_size(model, input_size) if dynamic_size else input_size
    example = torch.randn(2, 3, *trace_size)
    dims: dict[int, torch.export.Dim] = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=4096)
    if dynamic_size:
        dims |= {2: torch.export.Dim("height", min=MIN_SIDE, max=8192),
                 3: torch.export.Dim("width", min=MIN_SIDE, max=8192)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, suffix=".part") as tmp, _exporter_logs(quiet):
        program = torch.onnx.export(graph, (example,), dynamo=True,
                                    dynamic_shapes={"x": dims} if dims else None,
                                    input_names=["images"], output_names=[output], verbose=False)
        assert program is not None  # dynamo=True always returns the program
        if isinstance(model, (DaViTClassifier, Florence2Encoder)):
            program.model.metadata_props.update(card_of(model).to_metadata())
        program.save(str(tmp))
        if verify:
            _verify(graph, tmp, _checks(input_size, dynamic_batch, dynamic_size), atol)
    return path


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


def _checks(input_size: tuple[int, int], dynamic_batch: bool,
            dynamic_size: bool) -> list[tuple[int, int, int]]:
    """The (batch, H, W) inputs the export is checked at."""
    height, width = input_size
    batches = (1, 3) if dynamic_batch else (2, 2)
    other = (max(MIN_SIDE, height * 3 // 4 + 5), max(MIN_SIDE, width * 5 // 4 + 3))
    return [(batches[0], height, width), (batches[1], *(other if dynamic_size else input_size))]


@contextlib.contextmanager
def _exporter_logs(quiet: bool) -> Iterator[None]:
    """Raise the exporter's loggers to WARNING while exporting (when ``quiet``)."""
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS] if quiet else []
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(max(logging.WARNING, each.level))
    try:
        yield
    finally:
        for each, level in zip(loggers, levels):
            each.setLevel(level)


def read_onnx_card(path: str | Path) -> ModelCard | None:
    """The model card an exported file carries (None for a file exported without one)."""
    require("onnx", "export", "reading an ONNX file")
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable ONNX file: {error}") from None
    meta = {prop.key: prop.value for prop in proto.metadata_props if prop.key == CARD_KEY}
    return card_from_metadata(meta, str(path))


def _verify(model: nn.Module, path: Path, checks: list[tuple[int, int, int]], atol: float) -> None:
    """Run the file with onnxruntime on random batches of each (batch, H, W) of ``checks`` and
    refuse it when its outputs differ from PyTorch's by more than ``atol`` x the largest value."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    for batch, height, width in checks:
        example = torch.randn(batch, 3, height, width, generator=generator)
        (got,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
        with torch.no_grad():
            expected = model(example)
        if got.shape != tuple(expected.shape):
            raise ExportError(f"the ONNX model's output for {batch} x {height} x {width} images has "
                              f"shape {got.shape}, PyTorch's {tuple(expected.shape)}")
        error = (torch.from_numpy(got) - expected).abs().max().item()
        scale = max(expected.abs().max().item(), 1e-6)
        if error > atol * scale:
            raise ExportError(f"the ONNX model's output for {batch} x {height} x {width} images "
                              f"differs from PyTorch's by {error:.3g} (largest value {scale:.3g}); "
                              "the export is not usable")
        logger.info("onnxruntime matches PyTorch at %d x %d x %d: max difference %.2g (largest "
                    "value %.3g)", batch, height, width, error, scale)
