"""Time this library's DaViT and timm's side by side, in one process (``davit benchmark``).

A Florence-2 tower (``davit-florence2-base``) is timed as ``model(x)``, the last-stage map, against
timm's ``davit_*_fl`` (``forward_features``) and, with ``reference="transformers"`` or ``"all"``,
transformers' ``Florence2VisionBackbone`` with eager and with SDPA attention.

All models get the same weights (ours converted to the reference's keys) and the same inputs, and run
alternately after warm-up, so that drift of the machine (frequency, other processes) affects both
alike. Reported per model: images/s (median, min, max over the repeats), peak memory of one step,
the achieved GFLOP/s (at the median step) and its share of the "matmul ceiling": the GFLOP/s of
the fastest of the 2048 x 2048 matrix products in the step's dtype that are timed in turn with the
models.

Model FLOPs are 2 x the multiply-adds counted by :func:`davit.flops.count_flops` (feature
extractor and head) per image, and 3 x that for a training step (forward, and a backward pass that
costs about twice the forward).

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during one step minus what was allocated
before it. On CPU, the highest running total of the bytes that PyTorch's CPU allocator handed out
during one step (from ``torch.profiler``'s memory events), minus what it freed; memory that MKL or
oneDNN allocate on their own is not included.

Runtimes (``backends``): the same weights on ONNX Runtime and OpenVINO (:mod:`davit.runtime`),
each with its worker threads set as it runs best (``threads`` of them, or one per core; ONNX
Runtime's threads do not spin), and with ``int8`` also their post-training int8 models, calibrated
on random or given images (:mod:`davit.quantize`). A runtime's threads can stay busy after its
call returns and slow whatever runs next, so with runtimes the steps are timed in blocks: each
model runs ``block`` timed steps in a row after one untimed step, the models take turns block by
block. Their peak memory is not measured (their allocators are not PyTorch's).

From Python: ``print(format_report(run(BenchmarkOptions(model="tiny", timm=False))))``. timm and
transformers (the ``benchmark`` extra) are imported only for the reference timings.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..checkpoint.resolve import ModelRef, resolve_device, resolve_model
from ..data.calibration import folder_images
from ..data.transforms import build_test_transform
from ..dtypes import cpu_has_bf16, cpu_int8_instructions
from ..errors import DeviceError, InvalidArgumentError
from ..exported import open_backend, open_float_and_int8
from ..flops import count_flops
from ..model import build_model, is_florence2
from ..quantize import quantize_pt2e
from ..runtime import BACKENDS, Backend, TorchBackend, dtype_refusal
from ..timing import CEILING_SIZE, matmul_step, peak_memory, time_alternately, time_in_blocks
from .references import timm_reference, transformers_reference
from .report import format_report, runtime_settings

__all__ = ["DTYPES", "MODES", "REFERENCES", "BenchmarkOptions", "Timing", "format_report", "reference_models", "run",
           "timm_reference", "transformers_reference"]

DTYPES = ("fp32", "bf16", "pure-bf16")
MODES = ("inference", "train")
REFERENCES = ("timm", "transformers", "all")  # transformers: Florence-2 towers only
TRANSFORMERS_ATTENTIONS = ("eager", "sdpa")


@dataclass
class Timing:
    """What was measured for one model."""

    name: str
    step_seconds: list[float]
    batch_size: int
    flops_per_step: float
    ceiling_gflops: float
    peak_memory_bytes: int | None = None
    images_per_second: dict[str, float] = field(init=False)
    gflops: float = field(init=False)
    share_of_ceiling: float = field(init=False)

    def __post_init__(self) -> None:
        rates = [self.batch_size / s for s in self.step_seconds]
        self.images_per_second = {"median": statistics.median(rates), "min": min(rates),
                                  "max": max(rates)}
        median_step = statistics.median(self.step_seconds)
        self.gflops = self.flops_per_step / median_step / 1e9
        self.share_of_ceiling = self.gflops / self.ceiling_gflops


@dataclass(frozen=True)
class BenchmarkOptions:
    """What to time: the model (see :func:`davit.checkpoint.resolve.resolve_model`), its input and step."""

    model: str = "tiny"
    batch_size: int = 16
    input_size: tuple[int, int] = (224, 224)
    dtype: str = "fp32"  # fp32, bf16 (autocast) or pure-bf16 (bfloat16 weights and inputs)
    mode: str = "inference"  # inference, or train (forward, backward and an AdamW step)
    compile: bool = False
    threads: int | None = None  # torch.set_num_threads; None keeps PyTorch's choice
    repeats: int = 10
    warmup: int = 2
    device: str | None = None  # None: cuda when available, else cpu
    timm: bool = True  # False: time this library's model alone (no reference)
    reference: str = "timm"  # one of REFERENCES: timm's DaViT, transformers' Florence-2 tower, all
    backends: tuple[str, ...] = ("torch",)  # of runtime.BACKENDS; torch (with the references) first
    int8: bool = False  # also time the int8 model of each runtime other than torch
    calibration: str | None = None  # int8: folder of calibration images; None: random images
    calibration_images: int = 32  # int8: at most this many calibration images
    block: int = 5  # with runtimes: timed steps in a row per model
    seed: int = 0  # the models are timed with random weights drawn from this seed (nothing downloaded)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InvalidArgumentError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.mode not in MODES:
            raise InvalidArgumentError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.reference not in REFERENCES:
            raise InvalidArgumentError(f"reference must be one of {REFERENCES}, got "
                                       f"{self.reference!r}")
        counts = {"batch_size": self.batch_size, "repeats": self.repeats, "threads": self.threads,
                  **dict(zip(("height", "width"), self.input_size))}
        for name, value in counts.items():
            if value is not None and value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value}")
        if self.warmup < 0:
            raise InvalidArgumentError(f"warmup must be zero or positive, got {self.warmup}")
        self._check_backends()

    def _check_backends(self) -> None:
        unknown = [name for name in self.backends if name not in BACKENDS]
        if unknown or not self.backends or len(set(self.backends)) != len(self.backends):
            raise InvalidArgumentError(f"backends must be distinct names of {', '.join(BACKENDS)}, got "
                                       f"{', '.join(self.backends) or 'none'}")
        for name, value in {"calibration_images": self.calibration_images, "block": self.block}.items():
            if value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value}")
        runtimes = self.runtimes
        if self.calibration is not None and not self.int8:
            raise InvalidArgumentError("calibration images are for --int8; add --int8 or leave out --calibration")
        if self.int8 and not runtimes and self.mode != "inference":
            raise InvalidArgumentError("int8 models are timed for inference; drop --mode train")
        if not runtimes:
            return
        if self.mode != "inference" or self.dtype == "pure-bf16":
            raise InvalidArgumentError("onnxruntime and openvino are timed for inference in fp32 or bf16; "
                                       "use --mode inference and --dtype fp32 or bf16")
        if self.device not in (None, "cpu"):
            raise InvalidArgumentError("onnxruntime and openvino are timed on the CPU; use --device cpu")
        refusals = [refusal for name in runtimes if (refusal := dtype_refusal(name, self.dtype))]
        if refusals:
            raise InvalidArgumentError(refusals[0])

    @property
    def runtimes(self) -> tuple[str, ...]:
        """The backends other than torch."""
        return tuple(name for name in self.backends if name != "torch")


def run(options: BenchmarkOptions) -> dict:
    """Build the models, time them and return the report as a JSON-ready dict."""
    if options.threads:
        torch.set_num_threads(options.threads)
    default_device = "cuda" if torch.cuda.is_available() and not options.runtimes else "cpu"
    device = resolve_device(options.device or default_device)
    if options.dtype != "fp32" and device.type == "cpu" and not cpu_has_bf16():
        raise DeviceError("this CPU has no bfloat16 matrix support; use --dtype fp32")
    ref = resolve_model(options.model)
    torch.manual_seed(options.seed)
    # a Florence-2 encoder is timed as its tower alone: model(x), the last-stage map
    florence2 = is_florence2(ref.arch)
    num_classes = 0 if florence2 else ref.num_classes
    ours = build_model(ref.arch, num_classes, projection_dim=0 if florence2 else None)
    flops = count_flops(ours, options.input_size)
    flops_per_image = 2 * (flops["flops"] + flops["head_flops"])
    flops_per_step = flops_per_image * options.batch_size * (3 if options.mode == "train" else 1)
    models: dict[str, nn.Module] = {"davit": ours, **reference_models(ref, options, ours)} if (
        "torch" in options.backends) else {}

    steps = _steps(models, options, ref.num_classes, device)
    runtimes = open_runtimes(ours, options)
    images = _images(options)[0]
    steps |= {name: _runtime_step(backend, images) for name, backend in runtimes.items()}
    ceiling_dtype = torch.float32 if options.dtype == "fp32" else torch.bfloat16
    steps["matmul"] = matmul_step(device, ceiling_dtype)
    if runtimes:
        seconds = time_in_blocks(steps, options.repeats, options.warmup, options.block)
    else:
        seconds = time_alternately(steps, options.repeats, options.warmup, device)
    ceiling = 2 * CEILING_SIZE ** 3 / min(seconds.pop("matmul")) / 1e9
    del steps["matmul"]
    timings = {name: Timing(name, seconds[name], options.batch_size, flops_per_step, ceiling,
                            None if name in runtimes else peak_memory(step, device))
               for name, step in steps.items()}
    return _report(options, ref, device, num_classes, runtimes, timings, flops_per_image, flops_per_step, ceiling)


def _report(options: BenchmarkOptions, ref: ModelRef, device: torch.device, num_classes: int,
            runtimes: dict[str, Backend], timings: dict[str, Timing], flops_per_image: float,
            flops_per_step: float, ceiling: float) -> dict:
    """The JSON-ready report: the set-up (versions included), each model's timing and the speed-ups."""
    config = {"model": options.model, "arch": ref.arch.to_dict(), "num_classes": num_classes,
              "batch_size": options.batch_size, "input_size": list(options.input_size),
              "dtype": options.dtype, "mode": options.mode, "compile": options.compile,
              "threads": torch.get_num_threads(), "repeats": options.repeats,
              "warmup": options.warmup, "device": str(device), "torch": torch.__version__,
              "timm": _version("timm"), "transformers": _version("transformers"),
              "backends": list(options.backends), "int8": options.int8}
    if device.type == "cpu":
        config["cpu"] = {"capability": torch.backends.cpu.get_cpu_capability(), "bf16": cpu_has_bf16(),
                         "int8_instructions": cpu_int8_instructions()}
    if runtimes:
        config |= {"block": options.block, "runtimes": {name: runtime_settings(backend)
                                                        for name, backend in runtimes.items()},
                   "onnxruntime": _version("onnxruntime"), "openvino": _version("openvino"),
                   "nncf": _version("nncf")}
        if options.int8:
            config |= {"calibration": options.calibration or "random",
                       "calibration_images": options.calibration_images}
    report: dict[str, Any] = {"config": config, "flops_per_image": flops_per_image,
                              "flops_per_step": flops_per_step, "ceiling_gflops": ceiling,
                              "results": {name: asdict(t) for name, t in timings.items()}}
    baseline = next(iter(timings))  # davit (torch), else the first runtime
    report["baseline"] = baseline
    ours_ips = timings[baseline].images_per_second
    report["speedups"] = {name: {"median": ours_ips["median"] / t.images_per_second["median"],
                                 "best": ours_ips["max"] / t.images_per_second["max"]}
                          for name, t in timings.items() if name != baseline}
    if "timm" in timings:
        report["speedup_vs_timm"] = report["speedups"]["timm"]["median"]
        report["speedup_vs_timm_best"] = report["speedups"]["timm"]["best"]
    return report


def reference_models(ref: ModelRef, options: BenchmarkOptions, ours: nn.Module) -> dict[str, nn.Module]:
    """The reference models ``options`` asks for, with ``ours``'s weights."""
    if not options.timm:
        return {}
    florence2 = is_florence2(ref.arch)
    if options.reference != "timm" and not florence2:
        raise InvalidArgumentError("transformers has DaViT only as Florence-2's vision tower; "
                                   "time a Florence-2 model (davit-florence2-base) or use "
                                   "--reference timm")
    models: dict[str, nn.Module] = {}
    if options.reference in ("timm", "all"):
        models["timm"] = timm_reference(ref.arch, 0 if florence2 else ref.num_classes,
                                        ours.state_dict())
    if options.reference in ("transformers", "all"):
        for attention in TRANSFORMERS_ATTENTIONS:
            models[f"transformers-{attention}"] = transformers_reference(
                ref.arch, ours.state_dict(), attention)
    return models


def open_runtimes(model: nn.Module, options: BenchmarkOptions) -> dict[str, Backend]:
    """``model`` on each runtime of ``options`` (and, with ``int8``, its int8 model there), by name."""
    calibration = calibration_images(options) if options.int8 else None
    runtimes: dict[str, Backend] = {}
    if calibration is not None and "torch" in options.backends:
        int8, _ = quantize_pt2e(model, calibration, min_agreement=0.0, batch_size=options.batch_size,
                                timing_repeats=0)
        runtimes["torch-int8"] = TorchBackend(int8, "fp32", options.threads, name="torch-int8")
    for name in tqdm(options.runtimes, desc="converting for the runtimes", unit="runtime", file=sys.stderr):
        settings: dict[str, Any] = {"dtype": options.dtype, "input_size": options.input_size,
                                    "threads": options.threads}
        if calibration is None:
            opened: tuple[Backend, ...] = (open_backend(model, name, **settings),)
        else:
            opened = open_float_and_int8(model, name, calibration=calibration, **settings)
        runtimes |= {backend.name: backend for backend in opened}
    return runtimes


def _runtime_step(backend: Backend, images: Tensor) -> Callable[[], object]:
    return lambda: backend(images)


def calibration_images(options: BenchmarkOptions) -> list[Tensor]:
    """The int8 calibration batches: ``options.calibration``'s images resized to the input size,
    or random ones."""
    if options.calibration is not None:
        transform = build_test_transform(exact_size=options.input_size)
        return folder_images(options.calibration, transform, limit=options.calibration_images)
    generator = torch.Generator().manual_seed(2)
    return [torch.randn(options.calibration_images, 3, *options.input_size, generator=generator)]


def _images(options: BenchmarkOptions) -> tuple[Tensor, Tensor]:
    """The random images (float32, CPU) and labels every model is timed on."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(options.batch_size, 3, *options.input_size, generator=generator)
    labels = torch.randint(0, 1000, (options.batch_size,), generator=generator)
    return images, labels


def _steps(models: dict[str, nn.Module], options: BenchmarkOptions, num_classes: int,
           device: torch.device) -> dict[str, Callable[[], object]]:
    """One step function per model, all on the same random images (and labels)."""
    weight_dtype = torch.bfloat16 if options.dtype == "pure-bf16" else torch.float32
    images, labels = _images(options)
    labels = labels % max(num_classes, 1)
    images, labels = images.to(device, weight_dtype), labels.to(device)
    return {name: make_step(model.to(device, weight_dtype), images, labels, options.mode,
                            autocast=options.dtype == "bf16", compile_model=options.compile)
            for name, model in models.items()}


def make_step(model: nn.Module, images: Tensor, labels: Tensor, mode: str, autocast: bool,
              compile_model: bool) -> Callable[[], None]:
    """One inference forward or one training step (forward, backward, AdamW) of ``model``.

    Compiled for inference, the weights are frozen into the graph (inductor's ``freezing``: constants
    folded, linear weights prepacked for oneDNN), as a deployment compiles; on a 2-core AMX Xeon that
    made DaViT-tiny's compiled bf16 forward 1.26x its eager one at batch 16 and 1.4x at batch 1, where
    without it it was 0.94x (benchmarks/LOG.md).
    """
    forward = torch.compile(model) if compile_model else model
    amp = (lambda: torch.autocast(images.device.type, torch.bfloat16)) if autocast else (
        contextlib.nullcontext)
    if mode == "inference":
        model.eval()
        frozen = (lambda: inductor_config.patch(freezing=True)) if compile_model else contextlib.nullcontext

        def step() -> None:
            with torch.inference_mode(), amp(), frozen():
                forward(images)
        return step

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> None:
        with amp():
            out = forward(images).float()
            # a feature map (Florence-2's tower) has no labels: its mean stands in for a loss
            loss = F.cross_entropy(out, labels) if out.ndim == 2 else out.mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return train_step


def _version(package: str) -> str | None:
    """The installed version of ``package``, read without importing it."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
