"""Files written by ``davit export`` (``.onnx``, OpenVINO ``.xml``, ``.pt2``), opened on their runtime
as a model the rest of the library runs like its own: ``davit predict``, ``davit serve``, ``davit
embed``, :func:`davit.inference_model` and ``tools/test.py`` take them where they take a model.

Export once, run anywhere: the file carries its model card (classes, preprocessing) and its
signature (what goes in and comes out, the tolerance to PyTorch it was verified to), so nothing is
re-exported and nothing is guessed. :func:`open_exported` picks the runtime from the suffix:

* ``.onnx``: ONNX Runtime (fp32), or OpenVINO, which reads ONNX too (``backend="openvino"``, fp32
  or bf16);
* ``.xml``: OpenVINO (fp32 or bf16; an int8 IR runs its int8 layers);
* ``.pt2``: PyTorch, the reloaded ``torch.export`` program (fp32, or bf16 under autocast).

An :class:`ExportedModel` takes the normalised (N, 3, H, W) float32 batch the model's card
preprocesses images to and gives the export's output: logits (a classifier), the last-stage map
(a Florence-2 tower) or image tokens (``--encode-image``). Files exported ``--with-preprocessing``
take raw pixels and are for deployments without this library; they are refused here in one line.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .checkpoint.card import ModelCard
from .data.calibration import calibration_batches
from .errors import InvalidArgumentError, require
from .export import export_onnx, read_card, read_signature
from .export.exported_program import load_exported_program
from .export.openvino import INT8_KEY, read_openvino_model
from .quantize import (
    QuantizationReport,
    check_speed,
    quantize_onnx_file,
    quantize_openvino,
    quantize_openvino_model,
    quantize_pt2e,
)
from .runtime import (
    BACKENDS,
    CAPABILITIES,
    RUNTIME_DTYPES,
    Backend,
    CompiledModel,
    OnnxRuntimeBackend,
    OpenVinoBackend,
    TorchBackend,
    convert_to_openvino,
    dtype_refusal,
    require_runtime,
)

# suffix -> the runtime a file runs on by default, and every runtime that can run it
RUNTIMES = {".onnx": ("onnxruntime", "openvino"), ".xml": ("openvino",), ".pt2": ("torch",)}
CLASSIFIER_OUTPUTS = ("logits",)


def is_exported_file(source: object) -> bool:
    """Whether ``source`` names a file ``davit export`` writes (by its suffix; it need not exist)."""
    if not isinstance(source, (str, Path)) or str(source).startswith("hf-hub:"):
        return False
    return Path(source).suffix.lower() in RUNTIMES


class ExportedModel(nn.Module):
    """An exported file on its runtime, with the card and class names it carries.

    ``model(images)`` gives the export's float32 output on the CPU; :attr:`output` names it
    (``logits``, ``features`` or ``image_tokens``). ``card.preprocessing`` makes the input the file
    takes (its crop is the export's input size)."""

    def __init__(self, path: Path, backend: Backend, card: ModelCard | None, output: str,
                 verified_atol: float | None) -> None:
        super().__init__()
        self.path = path
        self.backend = backend
        self.card = card
        self.class_names = list(card.class_names) if card is not None and card.class_names else None
        self.output = output
        self.verified_atol = verified_atol
        self.num_classes = card.num_classes if card is not None and output in CLASSIFIER_OUTPUTS else 0

    @property
    def classifies(self) -> bool:
        """Whether the file gives class logits (a classifier's export)."""
        return self.output in CLASSIFIER_OUTPUTS

    @property
    def arch(self) -> Any:
        """The architecture record of the card (None without one)."""
        return self.card.architecture if self.card is not None else None

    @property
    def runtime(self) -> str:
        return self.backend.name

    def forward(self, images: Tensor) -> Tensor:
        return self.backend(images)

    def embed(self, images: Tensor, pooled: bool = True) -> Tensor:
        """One vector per image (the pooled image token) or every token, for an export of a
        Florence-2 encoder's image tokens (``davit export --encode-image``)."""
        if self.output != "image_tokens":
            raise InvalidArgumentError(
                f"{self.path} gives {self.output}, not image tokens; embeddings come from an export of a "
                "Florence-2 encoder's tokens (davit export MODEL OUT --encode-image)")
        tokens = self.backend(images)
        return tokens[:, 0] if pooled else tokens

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, runtime={self.runtime!r}, output={self.output!r}"


def exported_source(model: object, checkpoint: object = None, random_weights: bool = False) -> Path | None:
    """The exported file a command's model or checkpoint names (None when neither does); refuses
    what cannot go with one (its weights are in the file)."""
    named = [source for source in (model, checkpoint) if is_exported_file(source)]
    if not named:
        return None
    path = Path(str(named[0])).expanduser()
    if random_weights:
        raise InvalidArgumentError(f"{path.name} is an exported model with its weights; drop --random-weights")
    if model is not None and checkpoint is not None:
        raise InvalidArgumentError(f"{path.name} is an exported model with its weights and card; pass it "
                                   "alone, as the model or as the checkpoint, not with another")
    if not path.is_file():
        raise InvalidArgumentError(f"{path} does not exist; pass a file davit export wrote")
    return path


def exported_runtime(path: Path, backend: str | None, dtype: str) -> str:
    """The runtime ``path`` runs on for ``backend`` (None or "torch": the file's own) in ``dtype``;
    refuses a runtime or dtype the file cannot run in, before anything is loaded."""
    suffix = path.suffix.lower()
    if suffix not in RUNTIMES:
        raise InvalidArgumentError(f"{path} is not a file davit export writes (.onnx, .xml or .pt2)")
    # "torch", the commands' default backend, means "not chosen": the file's own runtime
    runtime = RUNTIMES[suffix][0] if backend in (None, "torch") else backend
    if runtime not in RUNTIMES[suffix]:
        raise InvalidArgumentError(f"{path.name} runs on {' or '.join(RUNTIMES[suffix])}, not {runtime}; "
                                   f"drop --backend {runtime}, or export the model for {runtime}")
    refusal = dtype_refusal(runtime, dtype)
    if refusal is not None:
        hint = "; pass --backend openvino for bf16" if suffix == ".onnx" and dtype == "bf16" else ""
        raise InvalidArgumentError(f"{path.name}: {refusal}{hint}")
    return runtime


def open_exported(path: str | Path, backend: str | None = None, dtype: str = "fp32",
                  threads: int | None = None) -> ExportedModel:
    """The exported file ``path`` ready to run on ``backend`` (None or "torch": its own runtime, see
    the module docstring) in ``dtype`` (fp32 or bf16) with ``threads`` runtime threads (None: one per core)."""
    path = Path(path).expanduser()
    runtime = exported_runtime(path, backend, dtype)
    if not path.is_file():
        raise InvalidArgumentError(f"{path} does not exist; pass a file davit export wrote")
    card = read_card(path)
    signature = read_signature(path) or _signature_of_older_file(card)
    if signature["input"] == "pixels":
        raise InvalidArgumentError(
            f"{path} takes raw pixels (exported --with-preprocessing), for deployments without this library; "
            "export the model without --with-preprocessing to run it with davit")
    opened = _backend(path, runtime, dtype, threads)
    size = signature.get("input_size")
    return ExportedModel(path, opened, _card_at(card, tuple(size)) if card is not None and size else card,
                         signature["output"], signature.get("verified_atol"))


def _signature_of_older_file(card: ModelCard | None) -> dict[str, Any]:
    """A file from before exports said what they give: a classifier's logits when its card has
    classes, else a tower's features, at the card's crop."""
    return {"input": "images", "output": "logits" if card is not None and card.num_classes else "features",
            "input_size": None, "verified_atol": None}


def _backend(path: Path, runtime: str, dtype: str, threads: int | None) -> Backend:
    if runtime == "onnxruntime":
        return OnnxRuntimeBackend(path, threads)
    if runtime == "openvino":
        ov_model = read_openvino_model(path)
        return OpenVinoBackend(ov_model, dtype, threads, int8=ov_model.has_rt_info([INT8_KEY]))
    program = load_exported_program(path)[0]
    backend = TorchBackend(program.module(), dtype, threads)
    backend.name = "torch.export" + ("" if dtype == "fp32" else f"-{dtype}")
    return backend


def _card_at(card: ModelCard, size: tuple[int, ...]) -> ModelCard:
    """``card`` whose preprocessing gives the (H, W) the file was exported at: its own when its crop
    is that size, else the resize scaled to the new crop (both sides set when H != W)."""
    pre = card.preprocessing
    height, width = int(size[0]), int(size[1])
    if pre.exact_size is not None:
        new = replace(pre, exact_size=(height, width))
    elif (height, width) == (pre.crop_size, pre.crop_size):
        return card
    elif height == width:
        new = replace(pre, crop_size=height, resize_edge=round(pre.resize_edge * height / pre.crop_size))
    else:
        new = replace(pre, exact_size=(height, width))
    return replace(card, preprocessing=new)


def open_backend(model: nn.Module, backend: str = "torch", *, dtype: str = "fp32",
                 input_size: tuple[int, int] = (224, 224), threads: int | None = None, int8: bool = False,
                 calibration: Tensor | Iterable[Tensor] | None = None, compiled: bool = False,
                 batch_sizes: Sequence[int] = (1,)) -> Backend:
    """``model`` (a DaViT classifier or tower, on the CPU) ready to run on ``backend``.

    ``dtype`` is the compute precision (fp32 or bf16; for int8, that of the layers left in
    floating point); ``threads`` the runtime's worker threads (None: one per core; for ``torch`` it
    sets ``torch.set_num_threads``, a process-wide setting). ``int8`` quantises the model after
    training (openvino, onnxruntime) with ``calibration`` images (a (N, 3, H, W) batch or an
    iterable of such batches, preprocessed as for inference); see :mod:`davit.quantize` for the
    agreement check that should go with it. ``compiled`` (torch only) runs the model as inductor's
    graph with frozen weights, compiled here for each of ``batch_sizes`` at ``input_size``
    (:class:`~davit.runtime.CompiledModel`: tens of seconds per size, then the lowest latency on CPUs
    with AMX, benchmarks/LOG.md).
    """
    _check(backend, dtype, threads, int8, calibration)
    if compiled and backend != "torch":
        raise InvalidArgumentError(f"compiling is for the torch backend, not {backend}, whose runtime "
                                   "optimises the graph itself; drop --compile or use --backend torch")
    model = model.eval().float().cpu()
    if backend == "torch" and compiled:
        graph = CompiledModel(model, batch_sizes, input_size, dtype)
        name = "torch-compiled" if dtype == "fp32" else f"torch-{dtype}-compiled"
        compiled_backend = TorchBackend(graph, "fp32", threads, name=name)  # sets the threads the graph is built for
        graph.warm_up()
        return compiled_backend
    if backend == "torch":
        return TorchBackend(model, dtype, threads)
    with tempfile.TemporaryDirectory(prefix="davit-runtime-") as folder:
        converted = _convert(model, backend, input_size, Path(folder))
        if int8:
            return _int8_backend(converted, backend, dtype, threads, calibration_batches(calibration))
        return _float_backend(converted, backend, dtype, threads)


CHECKED_INT8_BACKENDS = ("torch", "openvino")  # the runtimes whose int8 model comes with a timed report


def open_checked_int8(model: nn.Module, backend: str, calibration: Tensor | Iterable[Tensor],
                      holdout: Tensor | Iterable[Tensor] | None = None, *, min_agreement: float = 0.99,
                      allow_slower: bool = False, dtype: str = "fp32", threads: int | None = None,
                      batch_size: int = 16, smaller_batches: Sequence[int] = ()) -> tuple[Backend, QuantizationReport]:
    """``model`` quantised to int8 on ``backend`` and opened there, only where int8 is worth it:
    its top-1 agrees with fp32's on ``holdout`` (else the calibration images) at ``min_agreement``
    or more, and it is faster than the float model on this machine (:func:`davit.quantize.check_speed`;
    ``allow_slower`` only warns). What ``davit predict --int8`` and ``davit serve --int8`` run.

    ``torch``: torchao's PT2E quantisation compiled by inductor for ``batch_size`` (and each of
    ``smaller_batches``), timed against this library's fastest float path on this CPU;
    ``openvino``: NNCF, timed against OpenVINO's float model at batch 16, ``dtype`` being the
    precision of its float layers. Raises :class:`~davit.errors.ExportError` when int8 is refused.
    """
    if backend not in CHECKED_INT8_BACKENDS:
        raise InvalidArgumentError(f"int8 runs on the torch backend (torchao PT2E) or openvino (NNCF), not "
                                   f"{backend}; use --backend torch or openvino")
    _check(backend, dtype, threads, backend != "torch", calibration)  # torch's int8 is PT2E's, not a runtime's
    model = model.eval().float().cpu()
    runner: Backend
    if backend == "torch":
        int8, report = quantize_pt2e(model, calibration, holdout, min_agreement, batch_size=batch_size,
                                     smaller_batches=smaller_batches)
        runner = TorchBackend(int8, "fp32", threads, name="torch-int8")
    else:
        ov_model, report = quantize_openvino(model, calibration, holdout, min_agreement, threads=threads)
        runner = OpenVinoBackend(ov_model, dtype, threads, int8=True)
    check_speed(report, allow_slower)
    return runner, report


def open_float_and_int8(model: nn.Module, backend: str, *, dtype: str = "fp32",
                        input_size: tuple[int, int] = (224, 224), threads: int | None = None,
                        calibration: Tensor | Iterable[Tensor]) -> tuple[Backend, Backend]:
    """``open_backend(..., int8=False)`` and ``open_backend(..., int8=True)`` from one conversion
    of ``model`` (a minute for DaViT-tiny), for timing the two side by side."""
    _check(backend, dtype, threads, True, calibration)
    model = model.eval().float().cpu()
    with tempfile.TemporaryDirectory(prefix="davit-runtime-") as folder:
        converted = _convert(model, backend, input_size, Path(folder))
        return (_float_backend(converted, backend, dtype, threads),
                _int8_backend(converted, backend, dtype, threads, calibration_batches(calibration)))


def _check(backend: str, dtype: str, threads: int | None, int8: bool, calibration: object) -> None:
    """Refuse what cannot run, before any conversion (a minute for DaViT-tiny) is spent on it."""
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if dtype not in RUNTIME_DTYPES:
        raise InvalidArgumentError(f"dtype must be one of {', '.join(RUNTIME_DTYPES)} for a runtime, "
                                   f"not {dtype!r}")
    if threads is not None and threads < 1:
        raise InvalidArgumentError(f"threads must be a positive integer, got {threads}")
    if int8 and not CAPABILITIES[backend].int8:
        int8_runtimes = " or ".join(sorted((name for name, caps in CAPABILITIES.items() if caps.int8),
                                           key=lambda name: name != "openvino"))  # the suggested one first
        raise InvalidArgumentError(f"int8 runs on the {int8_runtimes} backend, not {backend}; use --backend openvino")
    refusal = dtype_refusal(backend, dtype)
    if refusal is not None:
        raise InvalidArgumentError(refusal)
    if int8 and calibration is None:
        raise InvalidArgumentError("int8 needs calibration images (a batch or batches of "
                                   "preprocessed images) to choose the quantisation ranges")
    require_runtime(backend, f"the {backend} backend")
    if int8 and backend == "openvino":
        require("nncf", "openvino", "int8 quantisation with OpenVINO")


def _convert(model: nn.Module, backend: str, input_size: tuple[int, int], folder: Path) -> Any:
    """``model`` in the runtime's format: an ``openvino.Model``, or an ONNX file in ``folder``."""
    if backend == "openvino":
        return convert_to_openvino(model, input_size)
    return export_onnx(model, folder / "model.onnx", input_size=input_size, verify=False)


def _float_backend(converted: Any, backend: str, dtype: str, threads: int | None) -> Backend:
    if backend == "openvino":
        return OpenVinoBackend(converted, dtype, threads)
    return OnnxRuntimeBackend(converted, threads)


def _int8_backend(converted: Any, backend: str, dtype: str, threads: int | None,
                  calibration: list[Tensor]) -> Backend:
    if backend == "openvino":
        return OpenVinoBackend(quantize_openvino_model(converted, calibration), dtype, threads, int8=True)
    return OnnxRuntimeBackend(quantize_onnx_file(converted, calibration), threads, "onnxruntime-int8")
