"""ONNX export, checked with onnxruntime.

A classifier exports ``model(x)`` (``logits``); a Florence-2 encoder its tower, ``model(x)``
(``features``, the last-stage map), or with ``encode_image=True`` its projected image tokens
(``image_tokens``); with ``with_preprocessing`` a classifier takes uint8 ``pixels`` and returns
``probabilities``. The batch size is dynamic; with ``dynamic_size`` the height and width are too
(the window padding is part of the graph; see :mod:`.plan`).

The file carries the model card (architecture, class names, preprocessing) as the JSON string
``davit_card`` of its ``metadata_props``, so that a deployment can read the classes and the
preprocessing from the model itself (:func:`read_onnx_card`).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint.card import CARD_KEY, ModelCard, card_from_metadata
from ..checkpoint.io import replacing
from ..data.images import ImageSource
from ..errors import CheckpointError, InvalidArgumentError, require
from .plan import SIGNATURE_KEY, ExportPlan, plan_export, read_signature
from .verify import Runner, verify_export

# The exporter's own loggers: hundreds of INFO lines per export (initializer deduplication,
# rewrite rules), noise to anyone but a developer of the exporter.
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


def export_onnx(model: nn.Module, path: str | Path, input_size: tuple[int, int] = (224, 224),
                dynamic_batch: bool = True, verify: bool = True, atol: float = 1e-4,
                quiet: bool = True, dynamic_size: bool = False, encode_image: bool = False,
                with_preprocessing: bool = False, check_images: Sequence[ImageSource] = ()) -> Path:
    """Write ``model`` (a (N, 3, H, W) float32 batch in) as an ONNX file.

    The output is ``model(x)`` (logits, or a Florence-2 tower's last-stage map), or
    ``model.encode_image(x)`` with ``encode_image``; with ``with_preprocessing`` the file takes
    uint8 (N, H, W, 3) pixels of any size and returns class probabilities. The batch size is
    dynamic unless ``dynamic_batch=False``; the spatial size is ``input_size`` unless
    ``dynamic_size``. With ``verify`` the file is run with onnxruntime (two batch sizes; two image
    sizes when dynamic; the ``check_images``) and must match PyTorch within ``atol`` relative to
    the largest output value. The model's card goes into the file's metadata. ``quiet`` holds back
    the exporter's INFO logs.
    """
    path = check_onnx_path(path, verify)
    plan = plan_export(model, input_size, dynamic_batch, dynamic_size, encode_image, with_preprocessing,
                       check_images)
    return write_onnx(plan, path, verify, atol, quiet)


def check_onnx_path(path: str | Path, verify: bool) -> Path:
    """``path`` when it names an ONNX file and the packages to write (and check) it are there."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise InvalidArgumentError(f"the output file must end in .onnx, got {path}")
    require("onnxscript", "export", "ONNX export")  # the exporter builds the graph with onnxscript
    if verify:
        require("onnxruntime", "export", "checking the export (skipped with --no-verify)")
    return path


def write_onnx(plan: ExportPlan, path: Path, verify: bool = True, atol: float = 1e-4,
               quiet: bool = True) -> Path:
    """Export ``plan`` to the ONNX file ``path`` (written whole or not at all), checked with
    onnxruntime when ``verify``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, suffix=".part") as tmp, exporter_logs(quiet):
        program = torch.onnx.export(plan.program, dynamo=True, input_names=[plan.input_name],
                                    output_names=[plan.output_name], verbose=False)
        assert program is not None  # dynamo=True always returns the program
        if plan.card is not None:
            program.model.metadata_props.update(plan.card.to_metadata())
        program.model.metadata_props[SIGNATURE_KEY] = plan.signature(atol if verify else None)
        program.save(str(tmp))
        if verify:
            verify_export(plan, onnxruntime_runner(tmp), "onnxruntime", atol)
    return path


def onnxruntime_runner(path: Path) -> Runner:
    """The ONNX file as a function of its one input."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(array: np.ndarray) -> np.ndarray:
        return session.run(None, {name: array})[0]

    return run


@contextlib.contextmanager
def exporter_logs(quiet: bool) -> Iterator[None]:
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
    meta = onnx_metadata(path)
    return card_from_metadata({CARD_KEY: meta[CARD_KEY]} if CARD_KEY in meta else {}, str(path))


def read_onnx_signature(path: str | Path) -> dict | None:
    """What the file takes and gives (:meth:`.plan.ExportPlan.signature`); None when it does not say."""
    return read_signature(onnx_metadata(path), str(path))


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (its graph and weights are not read)."""
    require("onnx", "export", "reading an ONNX file")
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable ONNX file: {error}") from None
    return {prop.key: prop.value for prop in proto.metadata_props}
