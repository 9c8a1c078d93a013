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
