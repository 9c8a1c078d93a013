"""Export a DaViT classifier to ONNX for deployment, checked with onnxruntime.

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
from .model import DaViTClassifier

logger = logging.getLogger("davit")

# The exporter's own loggers: hundreds of INFO lines per export (initializer deduplication,
# rewrite rules), noise to anyone but a developer of the exporter.
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


def export_onnx(model: nn.Module, path: str | Path, input_size: tuple[int, int] = (224, 224),
                dynamic_batch: bool = True, verify: bool = True, atol: float = 1e-4,
                quiet: bool = True) -> Path:
    """Write ``model`` (logits of a (N, 3, H, W) float32 batch) as an ONNX file.

    The spatial size is fixed to ``input_size``; the batch size is dynamic unless
    ``dynamic_batch=False``. With ``verify`` the file is run with onnxruntime on a batch of 2 random
    images and must match PyTorch within ``atol`` (relative to the largest logit). A
    :class:`DaViTClassifier`'s card goes into the file's metadata. ``quiet`` holds back the
    exporter's INFO logs.
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise InvalidArgumentError(f"the output file must end in .onnx, got {path}")
    require("onnxscript", "export", "ONNX export")  # the exporter builds the graph with onnxscript
    if verify:
        require("onnxruntime", "export", "checking the export (skipped with --no-verify)")
    height, width = input_size
    model = model.eval().float().cpu()
    example = torch.randn(2, 3, height, width)
    dynamic_shapes = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, suffix=".part") as tmp, _exporter_logs(quiet):
        program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=dynamic_shapes,
                                    input_names=["images"], output_names=["logits"], verbose=False)
        assert program is not None  # dynamo=True always returns the program
        if isinstance(model, DaViTClassifier):
            program.model.metadata_props.update(card_of(model).to_metadata())
        program.save(str(tmp))
        if verify:
            _verify(model, tmp, example, atol)
    return path


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


def _verify(model: nn.Module, path: Path, example: torch.Tensor, atol: float) -> None:
    """Run the file with onnxruntime and refuse it when its logits differ from PyTorch's."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    with torch.no_grad():
        expected = model(example)
    error = (torch.from_numpy(got) - expected).abs().max().item()
    scale = max(expected.abs().max().item(), 1e-6)
    if error > atol * scale:
        raise ExportError(f"the ONNX model's logits differ from PyTorch's by {error:.3g} "
                          f"(largest logit {scale:.3g}); the export is not usable")
    logger.info("onnxruntime matches PyTorch: max difference %.2g (largest logit %.3g)", error, scale)
