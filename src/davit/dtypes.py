"""The compute precisions a user names (``--dtype fp32|bf16|fp16``) and the autocast dtype each
means: one table for training, evaluation, prediction, embedding and the runtimes."""
from __future__ import annotations

import torch

from .errors import InvalidArgumentError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DTYPES = ("fp32", *AMP_DTYPES)


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a ``--dtype`` value asks for (None for fp32); fp16 only on CUDA, where
    PyTorch's CPU kernels have no half-precision fast path."""
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if dtype == "fp16" and device.type != "cuda":
        raise InvalidArgumentError(f"--dtype fp16 needs a CUDA device; on {device.type} use bf16 or fp32")
    return AMP_DTYPES.get(dtype)


# /proc/cpuinfo flags of the x86 int8 dot-product instructions oneDNN's int8 kernels use, fastest first
INT8_DOT_PRODUCT_FLAGS = {"amx_int8": "AMX-INT8", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI"}


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX) in oneDNN;
    elsewhere bf16 is emulated and slower than fp32."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_int8_instructions(cpuinfo: str | None = None) -> str | None:
    """The fastest int8 dot-product instruction set of this CPU (``AMX-INT8``, ``AVX512-VNNI``,
    ``AVX-VNNI``), or None where it has none. Without them oneDNN multiplies int8 through 16-bit
    intermediate sums (AVX2), fewer multiply-adds per cycle than VNNI and prone to saturating, so
    whether int8 pays there is measured, never assumed (on a 2-core AVX2 EPYC the PT2E int8 model
    still ran at 1.6x fp32: benchmarks/LOG.md). Read from ``/proc/cpuinfo`` (``cpuinfo``: its text,
    for tests); None where that cannot be read."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as file:
                cpuinfo = file.read()
        except OSError:
            return None
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return next((name for flag, name in INT8_DOT_PRODUCT_FLAGS.items() if flag in flags), None)


def fastest_cpu_float() -> str:
    """This library's fastest float precision on this CPU: bf16 where it is native, else fp32."""
    return "bf16" if cpu_has_bf16() else "fp32"
