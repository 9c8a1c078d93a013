"""The CPU inference runtimes a DaViT model runs on: PyTorch itself, ONNX Runtime or OpenVINO,
each behind one small class. :func:`davit.exported.open_backend` opens one for a PyTorch model
(exporting it for the runtime), :func:`davit.exported.open_exported` for a file ``davit export`` wrote.

Every runtime is called the same way, ``backend(images)``: a (N, 3, H, W) float32 batch, already normalised, in; the
model's float32 output (logits) out, on the CPU. That lets ``davit benchmark`` time the same weights
on each runtime, and prediction use whichever is fastest, without knowing how each is driven.

* ``torch``: the model itself, without autograd, under bfloat16 autocast for ``dtype="bf16"``.
* ``onnxruntime``: the model exported to ONNX (dynamic batch, :func:`davit.export.export_onnx`)
  in a session whose worker threads do not spin (a spinning pool keeps cores busy after each call
  and slows whatever runs next). ONNX Runtime's CPU provider has no bfloat16 path: fp32 only, or
  int8 through its static quantisation (:mod:`davit.quantize`).
* ``openvino``: the model converted by ``openvino.convert_model`` from a ``torch.export`` program
  (dynamic batch), compiled for the CPU with the dtype as its inference precision (OpenVINO would
  otherwise pick bfloat16 on its own on CPUs that have it); int8 through NNCF's post-training
  quantisation (:mod:`davit.quantize`).

The spatial size is fixed at ``input_size`` for the exported runtimes; the batch size is free.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch._inductor.config as inductor_config
from torch import Tensor, nn

from .dtypes import autocast_dtype
from .errors import InvalidArgumentError, require

logger = logging.getLogger("davit")

OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16"}


@dataclass(frozen=True)
class Capabilities:
    """What a runtime can do here: the compute dtypes it has, whether it has an int8 path, whether
    it runs on the CPU only, and the package (and the extra that installs it) it needs."""

    dtypes: tuple[str, ...]
    int8: bool
    cpu_only: bool
    module: str | None = None
    extra: str | None = None


# The one table every command, the server, the benchmark and the exported files consult.
CAPABILITIES = {
    "torch": Capabilities(("fp32", "bf16"), int8=False, cpu_only=False),
    # ONNX Runtime's CPU provider has no bfloat16 path; its int8 is static QDQ quantisation
    "onnxruntime": Capabilities(("fp32",), int8=True, cpu_only=True, module="onnxruntime", extra="export"),
    "openvino": Capabilities(("fp32", "bf16"), int8=True, cpu_only=True, module="openvino", extra="openvino"),
}
BACKENDS = tuple(CAPABILITIES)
RUNTIME_DTYPES = ("fp32", "bf16")  # what at least one runtime computes in


def dtype_refusal(backend: str, dtype: str) -> str | None:
    """Why ``backend`` cannot compute in ``dtype``, as a message naming what does (None: it can)."""
    dtypes = CAPABILITIES[backend].dtypes
    if dtype in dtypes:
        return None
    others = [name for name, caps in CAPABILITIES.items() if dtype in caps.dtypes and caps.cpu_only]
    elsewhere = f"; {dtype} runs on {' or '.join(others)}" if others else ""
    no_bf16 = backend == "onnxruntime" and dtype == "bf16"
    reason = "ONNX Runtime's CPU provider has no bfloat16 path: " if no_bf16 else ""
    return f"{reason}{backend} runs --dtype {' or '.join(dtypes)}, not {dtype}{elsewhere}"


def require_runtime(backend: str, feature: str) -> None:
    """Stop with the ``pip install`` to run when ``backend``'s package is missing."""
    caps = CAPABILITIES[backend]
    if caps.module is not None and caps.extra is not None:
        require(caps.module, caps.extra, feature)


class Backend(Protocol):
    """A model on one runtime: a normalised float32 (N, 3, H, W) batch in, float32 output out."""

    name: str

    def __call__(self, images: Tensor) -> Tensor: ...


class TorchBackend:
    """The PyTorch model itself (eager, with this library's fast CPU kernels)."""

    def __init__(self, model: nn.Module, dtype: str, threads: int | None, name: str | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.model = model
        self.amp = autocast_dtype(dtype, torch.device("cpu"))
        self.name = name or ("torch" if dtype == "fp32" else f"torch-{dtype}")

    def __call__(self, images: Tensor) -> Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=self.amp, enabled=self.amp is not None):
            return self.model(images.float()).float()


class CompiledModel(nn.Module):
    """A model compiled by inductor with its weights frozen into the graph (constants folded, linear
    weights prepacked for oneDNN), for a few batch sizes, and run at any: inputs are cut into batches
    of the largest, and what is left over goes to the smallest compiled size that holds it (padded by
    repeating its first image), the outputs trimmed. One graph per size: a server's single image
    should not run as a padded full batch, and a size met for the first time would cost a compilation
    in the middle of a request.

    ``float_precision`` is the precision the graph computes its float layers in: ``"bf16"`` compiles
    and runs it under bfloat16 autocast, ``"fp32"`` keeps float32. The output is float32 either way.
    DaViT-tiny on a 2-core AMX Xeon, bf16: 1.4x the eager model at batch 1 and 1.26x at batch 16;
    a PT2E int8 model with bf16 between its products 1.33x bf16 eager, with fp32 0.97x
    (benchmarks/LOG.md). Each size compiles at its first call (tens of seconds): :meth:`warm_up`
    does them all at once.
    """

    def __init__(self, model: nn.Module, batch_sizes: Sequence[int], input_size: tuple[int, int],
                 float_precision: str = "fp32") -> None:
        super().__init__()
        if float_precision not in ("fp32", "bf16"):
            raise InvalidArgumentError(f"float_precision is fp32 or bf16, not {float_precision!r}")
        if not batch_sizes or min(batch_sizes) < 1:
            raise InvalidArgumentError(f"batch sizes to compile for are positive, got {list(batch_sizes)}")
        self.compiled = torch.compile(model, dynamic=False)
        self.batch_sizes, self.input_size = tuple(sorted(set(batch_sizes))), input_size
        self.float_precision = float_precision

    @property
    def batch_size(self) -> int:
        """The largest compiled batch size."""
        return self.batch_sizes[-1]

    def warm_up(self) -> None:
        """Compile the graph for every batch size now."""
        for size in self.batch_sizes:
            self.run(torch.zeros(size, 3, *self.input_size))

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) != self.input_size:
            raise InvalidArgumentError(f"this model was compiled for {self.input_size[0]}x{self.input_size[1]} "
                                       f"images, got {tuple(x.shape[2:])}")
        outputs = []
        for chunk in x.float().split(self.batch_size):
            count = len(chunk)
            size = next(size for size in self.batch_sizes if size >= count)
            if count < size:
                chunk = torch.cat([chunk, chunk[:1].expand(size - count, *chunk.shape[1:])])
            outputs.append(self.run(chunk)[:count])
        return torch.cat(outputs)

    def run(self, batch: Tensor) -> Tensor:
        """The compiled graph on a batch of a compiled size (compiled now, frozen, if it is new)."""
        with (torch.no_grad(), inductor_config.patch(freezing=True),
              torch.autocast("cpu", torch.bfloat16, enabled=self.float_precision == "bf16")):
            return self.compiled(batch).float()


class OnnxRuntimeBackend:
    """An ONNX Runtime session on an ONNX file (the model's export, or its int8 quantisation)."""

    def __init__(self, path: str | Path, threads: int | None, name: str = "onnxruntime") -> None:
        require_runtime("onnxruntime", "the onnxruntime backend")
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or _cores()
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.name = name

    def __call__(self, images: Tensor) -> Tensor:
        array = images.detach().float().cpu().contiguous().numpy()
        (output,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(output)


@functools.cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core``. Each Core loads the CPU plugin and destroying the last
    one unloads it while its thread pool may still run, which crashed a long-running process later,
    at random (a segfault in an idle thread); one Core for the whole process is never destroyed."""
    require_runtime("openvino", "the openvino backend")
    import openvino

    return openvino.Core()


class OpenVinoBackend:
    """An OpenVINO model compiled for the CPU, with the dtype as its inference precision (None:
    OpenVINO's own choice for this CPU, bfloat16 where the CPU has it). For an int8 model the
    dtype is that of the layers left in floating point."""

    def __init__(self, ov_model: Any, dtype: str | None, threads: int | None, int8: bool = False) -> None:
        require_runtime("openvino", "the openvino backend")

        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if dtype is not None:
            config["INFERENCE_PRECISION_HINT"] = OPENVINO_PRECISION[dtype]
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = openvino_core().compile_model(ov_model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()  # one infer request: calls from several threads take turns
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        if dtype == "bf16" and self.precision != "bf16":
            logger.warning("OpenVINO computes in %s on this CPU, which has no native bfloat16: bf16 was asked for",
                           self.precision)
        self.name = "openvino" + ("-int8" if int8 else "" if self.precision == "f32" else f"-{self.precision}")

    def __call__(self, images: Tensor) -> Tensor:
        array = images.detach().float().cpu().contiguous().numpy()
        with self.lock:
            self.request.infer({0: array})
            output = self.request.get_output_tensor(0).data.copy()
        return torch.from_numpy(output)


def convert_to_openvino(model: nn.Module, input_size: tuple[int, int]) -> Any:
    """``model`` as an ``openvino.Model`` with a dynamic batch dimension.

    Converted from a ``torch.export`` program (as the ONNX export is): that graph holds the plain
    layers rather than this library's oneDNN kernels, and a symbolic batch. The example batch is 2,
    because torch.export fixes a dimension whose example value is 1.
    """
    require_runtime("openvino", "converting to OpenVINO")
    import openvino

    model = model.eval().float().cpu()
    example = torch.randn(2, 3, *input_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    # share_weights=False: a shared ov.Model points into the torch tensors, and is corrupt (a segfault
    # later, at random) once they are freed or changed, e.g. by training the model further
    return openvino.convert_model(program, share_weights=False)


def _cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
