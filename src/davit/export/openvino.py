"""OpenVINO IR (``.xml`` + ``.bin``): converted by ``openvino.convert_model`` from the
``torch.export`` program, weights kept in float32 (not OpenVINO's default fp16 compression, so
that the file matches PyTorch to 1e-4), checked by compiling it for the CPU in f32 precision.
int8 models come from :mod:`davit.quantize` (NNCF) and are checked there, by top-1 agreement.

The model card travels in the model's ``rt_info`` under ``davit_card`` (the JSON string), read
back by :func:`read_openvino_card`.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint.card import CARD_KEY, ModelCard, card_from_metadata
from ..data.calibration import calibration_batches, folder_images
from ..errors import CheckpointError, ExportError, InvalidArgumentError, require
from ..quantize import QuantizationReport, check_speed, quantize_openvino, top1_agreement
from ..runtime import openvino_core
from .plan import SIGNATURE_KEY, ExportPlan, input_transform, plan_export, read_signature
from .verify import Runner, verify_export

SUFFIX = ".xml"
INT8_KEY = "davit_int8"  # the int8 report, in rt_info


def convert_plan(plan: ExportPlan) -> Any:
    """``plan`` as an ``openvino.Model`` (dynamic dimensions kept)."""
    require("openvino", "openvino", "OpenVINO export")
    import openvino

    # share_weights=False: a shared ov.Model points into the torch tensors, and is corrupt (a segfault
    # later, at random) once they are freed or changed, e.g. by training the model further
    return openvino.convert_model(plan.program, share_weights=False)


def describe(ov_model: Any, plan: ExportPlan, verified_atol: float | None) -> None:
    """Put the card and the signature in the model's ``rt_info``, where :func:`read_openvino_card`
    and :func:`read_openvino_signature` find them."""
    if plan.card is not None:
        ov_model.set_rt_info(plan.card.to_json(), [CARD_KEY])
    ov_model.set_rt_info(plan.signature(verified_atol), [SIGNATURE_KEY])


def write_openvino(plan: ExportPlan, path: Path, verify: bool = True, atol: float = 1e-4,
                   transform: Callable[[Any], Any] | None = None) -> Path:
    """Export ``plan`` to ``path`` (.xml, with its .bin beside it; both replaced only once written
    and checked). ``transform`` (int8 quantisation) changes the converted model before it is
    saved; such a model is checked by its own means, not to ``atol``."""
    ov_model = convert_plan(plan)
    if transform is not None:
        ov_model = transform(ov_model)
    describe(ov_model, plan, atol if verify and transform is None else None)
    import openvino

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=path.parent) as folder:
        tmp = Path(folder) / path.name
        openvino.save_model(ov_model, str(tmp), compress_to_fp16=False)
        if verify and transform is None:
            verify_export(plan, openvino_runner(tmp), "OpenVINO", atol)
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp, path)
    return path


def openvino_runner(path: Path) -> Runner:
    """The IR compiled for the CPU in f32 precision, as a function of its one input."""

    compiled = openvino_core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def run(array: np.ndarray) -> np.ndarray:
        return np.asarray(compiled([array])[0])

    return run


def read_openvino_card(path: str | Path) -> ModelCard | None:
    """The model card an OpenVINO IR carries (None for one exported without a card)."""
    meta = openvino_metadata(read_openvino_model(path))
    return card_from_metadata({CARD_KEY: meta[CARD_KEY]} if CARD_KEY in meta else {}, str(path))


def read_openvino_signature(path: str | Path) -> dict | None:
    """What the IR takes and gives (:meth:`.plan.ExportPlan.signature`); None when it does not say."""
    return read_signature(openvino_metadata(read_openvino_model(path)), str(path))


def read_openvino_model(path: str | Path) -> Any:
    """The ``openvino.Model`` of an IR (or of an ONNX file, which OpenVINO reads too)."""
    require("openvino", "openvino", "reading an OpenVINO model")

    try:
        return openvino_core().read_model(str(path))
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable OpenVINO model: {error}") from None


def openvino_metadata(ov_model: Any) -> dict[str, str]:
    """The entries of an ``openvino.Model``'s ``rt_info`` that this library writes."""
    return {key: ov_model.get_rt_info([key]).astype(str)
            for key in (CARD_KEY, SIGNATURE_KEY, INT8_KEY) if ov_model.has_rt_info([key])}


def export_openvino_int8(model: nn.Module, path: Path, calibration: str | Path | Tensor | Iterable[Tensor],
                         holdout: str | Path | Tensor | Iterable[Tensor] | None = None,
                         min_agreement: float = 0.99, input_size: tuple[int, int] = (224, 224), *,
                         threads: int | None = None, timing_repeats: int = 5,
                         allow_slower: bool = False) -> tuple[Path, QuantizationReport]:
    """Write ``model`` quantised to int8 by NNCF as OpenVINO IR at ``path`` (dynamic batch,
    ``input_size`` images), with the report on it (:func:`davit.quantize.quantize_openvino`).

    ``calibration`` and ``holdout`` are folders of image files (read with the card's
    preprocessing) or preprocessed (N, 3, H, W) batches. The written file is reloaded and its top-1
    must agree with the float32 PyTorch model's on the held-out images (the calibration images
    when none are given) at ``min_agreement`` or more, else :class:`ExportError` and nothing is
    written. The int8 model is timed against the float model on OpenVINO (``timing_repeats``
    steps; 0: not timed) and refused when it is slower (:func:`davit.quantize.check_speed`), unless
    ``allow_slower``. The card and the report travel in the model's ``rt_info`` (``davit_card``,
    ``davit_int8``).
    """
    require("openvino", "openvino", "OpenVINO export")
    require("nncf", "openvino", "int8 quantisation with OpenVINO")

    plan = plan_export(model, input_size)
    if getattr(plan.module, "head", None) is None:
        raise InvalidArgumentError("int8 export quantises a classifier (its top-1 is checked against "
                                   "float32); this model has no classification head")
    transform = input_transform(plan.card, input_size)

    def images(source: str | Path | Tensor | Iterable[Tensor], what: str) -> Tensor | list[Tensor]:
        if isinstance(source, (str, Path)):
            return folder_images(source, transform, what=what)
        return source if isinstance(source, Tensor) else list(source)

    calibrated = calibration_batches(images(calibration, "calibration"))
    compared = calibration_batches(images(holdout, "holdout")) if holdout is not None else None
    ov_model, report = quantize_openvino(plan.module, calibrated, compared, min_agreement, threads=threads,
                                         timing_repeats=timing_repeats)
    check_speed(report, allow_slower)
    describe(ov_model, plan, None)  # checked by top-1 agreement, not to a tolerance
    ov_model.set_rt_info(json.dumps(report.to_dict()), [INT8_KEY])
    import openvino

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=path.parent) as folder:
        tmp = Path(folder) / path.name
        openvino.save_model(ov_model, str(tmp), compress_to_fp16=False)
        run = openvino_runner(tmp)
        reloaded = top1_agreement(plan.module, lambda x: torch.from_numpy(run(x.numpy())), compared or calibrated)
        if reloaded < min_agreement:
            raise ExportError(f"the written int8 model's top-1 agrees with float32 on only {100 * reloaded:.2f}% "
                              f"of the images, under the minimum {100 * min_agreement:g}%; lower "
                              "--min-agreement or calibrate on more images")
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp, path)
    return path, report
