"""Export a DaViT classifier or Florence-2 encoder for deployment: ONNX, ``torch.export`` programs
and OpenVINO IR, each checked against PyTorch by running the written file (random batches and real
images), each carrying the model card, each with a dynamic batch (and height and width on request, ONNX
only; always, for a model exported with its preprocessing, which takes raw pixels).

:func:`export_model` is the one entry point (``davit export``); :func:`read_card` reads the card
back from any of the formats.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from ..checkpoint.card import ModelCard
from ..data.images import ImageSource
from ..errors import InvalidArgumentError, require
from .exported_program import read_exported_program_card, read_exported_program_signature, write_exported_program
from .onnx import check_onnx_path, export_onnx, read_onnx_card, read_onnx_signature, write_onnx
from .openvino import read_openvino_card, read_openvino_signature, write_openvino
from .plan import ExportPlan, plan_export
from .preprocessing import WithPreprocessing

# format -> the output file's suffix
FORMATS = {"onnx": ".onnx", "exported-program": ".pt2", "openvino": ".xml"}

__all__ = ["FORMATS", "ExportPlan", "WithPreprocessing", "export_model", "export_onnx", "format_of", "plan_export",
           "read_card", "read_exported_program_card", "read_onnx_card", "read_openvino_card", "read_signature",
           "write_export"]


def format_of(path: str | Path) -> str:
    """The export format a file name's suffix names (.onnx, .pt2, .xml)."""
    suffix = Path(path).suffix.lower()
    for name, expected in FORMATS.items():
        if suffix == expected:
            return name
    raise InvalidArgumentError(f"{path} is not an export this library writes: name it .onnx "
                               "(onnx), .pt2 (exported-program) or .xml (openvino)")


def export_model(model: nn.Module, path: str | Path, format: str = "onnx", *,
                 input_size: tuple[int, int] = (224, 224), dynamic_batch: bool = True,
                 dynamic_size: bool = False, encode_image: bool = False, with_preprocessing: bool = False,
                 verify: bool = True, check_images: Sequence[ImageSource] = (), atol: float = 1e-4,
                 quiet: bool = True) -> Path:
    """Write ``model`` to ``path`` in ``format`` (one of :data:`FORMATS`; the suffix must be the
    format's) and, with ``verify``, run the written file on random batches and ``check_images`` and
    raise :class:`~davit.errors.ExportError` when it differs from PyTorch by more than ``atol``
    relative to the largest output value.

    The input is a normalised float32 (N, 3, H, W) batch at ``input_size`` (any H and W with
    ``dynamic_size``, ONNX only), or with ``with_preprocessing`` uint8 (N, H, W, 3) pixels of any size that
    the model card's preprocessing turns into the model's input, the output then being class
    probabilities. N is free unless ``dynamic_batch=False`` (then 2).
    """
    plan = plan_export(model, input_size, dynamic_batch, dynamic_size, encode_image, with_preprocessing,
                       check_images)
    return write_export(plan, path, format, verify=verify, atol=atol, quiet=quiet)


def write_export(plan: ExportPlan, path: str | Path, format: str = "onnx", *, verify: bool = True,
                 atol: float = 1e-4, quiet: bool = True) -> Path:
    """Write a :func:`plan_export` plan in ``format`` (see :func:`export_model`); a plan is traced
    once, however many formats are written from it."""
    if format not in FORMATS:
        raise InvalidArgumentError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    path = Path(path)
    if path.suffix.lower() != FORMATS[format]:
        raise InvalidArgumentError(f"the output file must end in {FORMATS[format]} for the {format} format, got "
                                   f"{path} (the endings {', '.join(FORMATS.values())} name their formats)")
    if plan.dynamic_size and format != "onnx":
        # the trace keeps the window padding's shape conditions as run-time assertions, which a
        # .pt2 program checks (refusing sizes that need no padding) and OpenVINO cannot convert
        raise InvalidArgumentError(f"a dynamic height and width exports to onnx only; export {format} at "
                                   "one --input-size (--with-preprocessing takes photos of any size)")
    if format == "onnx":
        return write_onnx(plan, check_onnx_path(path, verify), verify, atol, quiet)
    if format == "exported-program":
        return write_exported_program(plan, path, verify, atol)
    require("openvino", "openvino", "OpenVINO export")
    return write_openvino(plan, path, verify, atol)


def read_card(path: str | Path) -> ModelCard | None:
    """The model card an exported file of any format carries (None when it has none)."""
    readers = {"onnx": read_onnx_card, "exported-program": read_exported_program_card,
               "openvino": read_openvino_card}
    return readers[format_of(path)](path)


def read_signature(path: str | Path) -> dict | None:
    """What an exported file of any format takes and gives (:meth:`ExportPlan.signature`); None for
    a file of an older version, which does not say."""
    readers = {"onnx": read_onnx_signature, "exported-program": read_exported_program_signature,
               "openvino": read_openvino_signature}
    return readers[format_of(path)](path)
