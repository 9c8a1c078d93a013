"""int8 post-training quantisation, refused when the int8 model's top-1 strays from fp32's.

The entry point for ``davit export --format openvino --int8`` and for Python:

    quantize_openvino(model, calibration, holdout=None, min_agreement=0.99, *, threads=None,
                      timing_repeats=5, converted=None) -> (openvino.Model, QuantizationReport)

quantises ``model`` with NNCF (OpenVINO backend: the transformer model type, whose ignored patterns
keep softmax and layer-norm inputs in float, and the mixed preset: symmetric weights, asymmetric
activations, which suits GELU outputs), on ``calibration`` images; measures the share of
``holdout`` images (the calibration images when none are given) whose top-1 class the int8 model
gives as the float32 PyTorch model does, and the speed gained over the float model on OpenVINO
(both at OpenVINO's own precision for this CPU's float layers, as a deployment runs them); and raises
:class:`~davit.errors.ExportError` when the agreement is under ``min_agreement``.

ONNX Runtime's static quantisation (QDQ on the products, per-channel int8 weights, uint8 activations) is
:func:`quantize_onnx_file`, used by ``open_backend(model, "onnxruntime", int8=True)``.

Images are (N, 3, H, W) float32 batches preprocessed as for inference; :func:`folder_images` reads
a folder of image files into such batches with the model card's preprocessing.
"""
from __future__ import annotations

import contextlib
import logging
import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .data.calibration import calibration_batches
from .dtypes import cpu_int8_instructions, fastest_cpu_float
from .errors import DatasetError, ExportError, InvalidArgumentError, require
from .runtime import CompiledModel, OpenVinoBackend, convert_to_openvino
from .timing import time_in_blocks

logger = logging.getLogger("davit")

EVAL_BATCH = 64  # images per forward when comparing top-1
ORT_QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")  # the products; norms, softmax and GELU stay float
TIMING_BATCH = 16  # images per step when timing int8 against the float model


@dataclass(frozen=True)
class QuantizationReport:
    """How an int8 model compares with the float32 one it was made from."""

    runtime: str  # openvino or onnxruntime
    calibration_images: int
    compared_on: str  # "holdout", or "calibration" when no held-out images were given
    compared_images: int
    agreement: float  # share of compared images whose int8 top-1 is fp32 PyTorch's top-1
    min_agreement: float
    float_precision: str  # OpenVINO's precision for the float model and int8's float layers: f32, bf16
    float_images_per_second: float | None  # the float model on the same runtime; None: not timed
    int8_images_per_second: float | None
    timing_batch: int
    int8_instructions: str | None = None  # this CPU's int8 dot products (AMX-INT8, AVX512-VNNI, AVX-VNNI); None: none

    @property
    def why_slower(self) -> str:
        """Why int8 can be expected not to pay on this CPU, or an empty string."""
        return "" if self.int8_instructions else " (this CPU has no VNNI or AMX int8 dot-product instructions)"

    @property
    def speedup(self) -> float | None:
        if self.float_images_per_second is None or self.int8_images_per_second is None:
            return None
        return self.int8_images_per_second / self.float_images_per_second

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup}

    def summary(self) -> str:
        """One line for the command line's output."""
        line = (f"int8 ({self.runtime}, {self.calibration_images} calibration images): top-1 agrees "
                f"with fp32 on {100 * self.agreement:.2f}% of {self.compared_images} "
                f"{self.compared_on} images (minimum {100 * self.min_agreement:g}%)")
        if self.speedup is not None:
            line += (f"; {self.int8_images_per_second:.1f} images/s against the float model's "
                     f"{self.float_images_per_second:.1f} ({self.float_precision}) at batch "
                     f"{self.timing_batch}: {self.speedup:.2f}x")
            if self.speedup < 1:
                line += f", not faster on this machine{self.why_slower}"
        return line


def quantize_openvino(model: nn.Module, calibration: Tensor | Iterable[Tensor],
                      holdout: Tensor | Iterable[Tensor] | None = None, min_agreement: float = 0.99, *,
                      threads: int | None = None, timing_repeats: int = 5,
                      converted: Any = None) -> tuple[Any, QuantizationReport]:
    """``model`` quantised to int8 as an ``openvino.Model`` (dynamic batch; the height and width of
    the calibration images), and the report on it.

    ``calibration`` and ``holdout`` are preprocessed images: a (N, 3, H, W) batch or an iterable
    of batches (see :func:`folder_images`). The agreement is measured on ``holdout``, or on the
    calibration images when it is None (which flatters the int8 model). ``timing_repeats`` steps of
    a batch of 16 time int8 against the float model on OpenVINO (0: not timed). ``converted`` is ``model``
    already converted by :func:`davit.runtime.convert_to_openvino` at the calibration images' size
    (it saves converting again; it is not changed). Raises :class:`ExportError`
    when the agreement is under ``min_agreement`` and :class:`DatasetError` for no calibration
    images.
    """
    if not 0 <= min_agreement <= 1:
        raise InvalidArgumentError(f"min_agreement is a share between 0 and 1, got {min_agreement}")
    model = model.eval().float().cpu()
    batches = _nonempty(calibration_batches(calibration), "calibration")
    input_size = (batches[0].shape[2], batches[0].shape[3])
    compared = _nonempty(calibration_batches(holdout), "holdout") if holdout is not None else batches
    fp32 = converted if converted is not None else convert_to_openvino(model, input_size)
    int8 = quantize_openvino_model(fp32, batches)
    # OpenVINO's own precision for the layers left in floating point, as a deployment gets it
    int8_backend = OpenVinoBackend(int8, None, threads, int8=True)
    agreement = top1_agreement(model, int8_backend, compared)
    speeds: tuple[float | None, float | None] = (None, None)
    if timing_repeats:
        timing = _timing_batch(compared)
        float_backend = OpenVinoBackend(fp32, None, threads)
        seconds = time_in_blocks({"float": lambda: float_backend(timing), "int8": lambda: int8_backend(timing)},
                                 timing_repeats, warmup=1, block=timing_repeats)
        speeds = (len(timing) / statistics.median(seconds["float"]), len(timing) / statistics.median(seconds["int8"]))
    report = QuantizationReport("openvino", _count(batches), "holdout" if holdout is not None else "calibration",
                                _count(compared), agreement, min_agreement, int8_backend.precision, *speeds,
                                TIMING_BATCH, cpu_int8_instructions())
    check_agreement(report)
    return int8, report


def check_agreement(report: QuantizationReport) -> None:
    """Raise :class:`ExportError` when ``report``'s agreement is under its minimum."""
    if report.agreement < report.min_agreement:
        raise ExportError(
            f"the int8 model's top-1 agrees with fp32 on only {100 * report.agreement:.2f}% of "
            f"{report.compared_images} {report.compared_on} images, under the minimum "
            f"{100 * report.min_agreement:g}%; calibrate on more images like the ones it will see, or "
            "lower --min-agreement")


def check_speed(report: QuantizationReport, allow_slower: bool = False) -> None:
    """Refuse (:class:`ExportError`) an int8 model that is not faster than the float model it was
    made from on this machine's runtime, which is the only reason to accept its lost accuracy; with
    ``allow_slower`` only warn. An untimed report passes."""
    speedup = report.speedup
    if speedup is None or speedup >= 1:
        return
    message = (f"the int8 model runs at {speedup:.2f}x the float model's speed on this machine "
               f"({report.int8_images_per_second:.1f} against {report.float_images_per_second:.1f} "
               f"images/s, {report.runtime} {report.float_precision}, batch {report.timing_batch})"
               f"{report.why_slower}")
    if not allow_slower:
        raise ExportError(f"{message}: int8 does not pay here; use the float model (leave out --int8), or "
                          "pass --allow-slower-int8 to use int8 anyway")
    logger.warning("%s; used anyway (--allow-slower-int8)", message)


def quantize_openvino_model(ov_model: Any, calibration: list[Tensor]) -> Any:
    """NNCF's post-training int8 quantisation of an ``openvino.Model`` (a copy; ``ov_model`` is
    kept), with statistics from every calibration image."""
    require("nncf", "openvino", "int8 quantisation with OpenVINO")
    import nncf

    images = [image.unsqueeze(0).numpy() for batch in _nonempty(calibration, "calibration") for image in batch]
    with _quieter("nncf"):
        return nncf.quantize(ov_model.clone(), nncf.Dataset(images), preset=nncf.QuantizationPreset.MIXED,
                             model_type=nncf.ModelType.TRANSFORMER, subset_size=len(images))


def quantize_onnx_file(path: Path, calibration: list[Tensor]) -> Path:
    """ONNX Runtime's static int8 quantisation of the ONNX file ``path`` (QDQ format, the matrix
    products and convolutions only, per-channel int8 weights, uint8 activations, min-max ranges
    over the calibration images); returns the new file, written next to ``path``."""
    require("onnxruntime", "export", "int8 quantisation with ONNX Runtime")
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = [image.unsqueeze(0).numpy() for batch in _nonempty(calibration, "calibration") for image in batch]

    class Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self.items = iter([{name: image} for image in images])

        def get_next(self) -> dict | None:
            return next(self.items, None)

    prepared = path.with_name(path.stem + "-prepared.onnx")
    quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
    name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
    quantized = path.with_name(path.stem + "-int8.onnx")
    with _quieter(""):  # onnxruntime.quantization logs a line per bias it copies, on the root logger
        quantize_static(str(prepared), str(quantized), Reader(name), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(ORT_QUANTIZED_OPS), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return quantized


def top1_agreement(model: nn.Module, backend: Callable[[Tensor], Tensor], batches: list[Tensor]) -> float:
    """The share of images whose top-1 class ``backend`` gives as the float32 ``model`` does."""
    same = total = 0
    for batch in batches:
        for chunk in batch.split(EVAL_BATCH):
            with torch.inference_mode():
                expected = model(chunk).argmax(dim=1)
            same += int((backend(chunk).argmax(dim=1) == expected).sum())
            total += len(chunk)
    return same / total


def _nonempty(batches: list[Tensor], what: str) -> list[Tensor]:
    batches = [batch for batch in batches if len(batch)]
    if not batches:
        raise DatasetError(f"no {what} images were given; give a folder or batch of preprocessed images")
    return batches


def _count(batches: list[Tensor]) -> int:
    return sum(len(batch) for batch in batches)


def _timing_batch(batches: list[Tensor]) -> Tensor:
    """A batch of 16 images, the given ones repeated when there are fewer."""
    images = torch.cat(batches)
    repeats = -(-TIMING_BATCH // len(images))
    return images.repeat(repeats, 1, 1, 1)[:TIMING_BATCH].contiguous()


@contextlib.contextmanager
def _quieter(name: str) -> Iterator[None]:
    """The logger ``name`` (``""``: the root logger) shows errors only while quantising: the
    quantisers' INFO and WARNING lines (statistics collection, copied biases) are their
    developers' business."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(logging.ERROR, level))
    try:
        yield
    finally:
        logger.setLevel(level)


def quantize_pt2e(model: nn.Module, calibration: Tensor | Iterable[Tensor],
                  holdout: Tensor | Iterable[Tensor] | None = None, min_agreement: float = 0.99,
                  batch_size: int = TIMING_BATCH, timing_repeats: int = 5,
                  smaller_batches: Sequence[int] = ()) -> tuple[CompiledModel, QuantizationReport]:
    """``model`` quantised to int8 in PyTorch: exported (``torch.export``), quantised by torchao's
    PT2E flow with ``X86InductorQuantizer`` (static, per-channel symmetric weights, asymmetric
    activations) on ``calibration``, then compiled by inductor with weight freezing, which lowers
    the products to oneDNN's int8 kernels (VNNI / AMX where the CPU has them), for ``batch_size``
    and each of ``smaller_batches`` (each size is one compilation; a server's batch of one image
    should not run as a padded full batch). The layers left in floating point run in this CPU's
    fastest float precision (bf16 where it is native, else fp32: :class:`~davit.runtime.CompiledModel`). Timed at
    ``batch_size`` against the float model's fastest eager path on this CPU (bf16 autocast where the
    CPU has native bf16, else fp32); the agreement with fp32 is measured on ``holdout`` (else the calibration images)
    and refused under ``min_agreement`` as :func:`quantize_openvino` does.
    """
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        raise InvalidArgumentError("PT2E int8 needs torchao: pip install 'davit-toolkit[int8]'") from None
    model = model.eval().float().cpu()
    batches = _nonempty(calibration_batches(calibration), "calibration")
    compared = _nonempty(calibration_batches(holdout), "holdout") if holdout is not None else batches
    input_size = (int(batches[0].shape[2]), int(batches[0].shape[3]))
    example = _timing_batch(batches)[:1].expand(batch_size, -1, -1, -1).contiguous()
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    with torch.no_grad():
        # traced with a dynamic batch (of at least two images: one would be specialised), so that one
        # quantised graph serves every compiled batch size
        any_batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(model, (example[:1].expand(max(batch_size, 2), -1, -1, -1).contiguous(),),
                                      dynamic_shapes={"x": {0: any_batch}})
        prepared = prepare_pt2e(program.module(), quantizer)
        for batch in batches:
            for chunk in batch.split(batch_size):
                prepared(chunk)
        converted = convert_pt2e(prepared)
    sizes = sorted({batch_size, *(size for size in smaller_batches if 0 < size < batch_size)})
    float_precision = fastest_cpu_float()
    int8 = CompiledModel(converted, sizes, input_size, float_precision)
    int8.warm_up()  # compiled here, with the weights frozen and prepacked
    agreement = top1_agreement(model, int8, compared)
    speeds: tuple[float | None, float | None] = (None, None)
    if timing_repeats:
        timing = _timing_batch(compared).repeat(-(-batch_size // TIMING_BATCH), 1, 1, 1)[:batch_size]

        def float_step() -> None:
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=float_precision == "bf16"):
                model(timing)

        seconds = time_in_blocks({"float": float_step, "int8": lambda: int8(timing)}, timing_repeats, warmup=1,
                                 block=timing_repeats)
        speeds = (len(timing) / statistics.median(seconds["float"]), len(timing) / statistics.median(seconds["int8"]))
    report = QuantizationReport("torch-inductor", _count(batches), "holdout" if holdout is not None else "calibration",
                                _count(compared), agreement, min_agreement, float_precision, *speeds, batch_size,
                                cpu_int8_instructions())
    check_agreement(report)
    return int8, report
