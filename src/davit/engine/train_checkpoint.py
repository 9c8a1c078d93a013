"""Training checkpoints: atomic writes, random-generator states, rotation and ``latest``/``best``.

A checkpoint is a dict of tensors and plain containers, readable with
``torch.load(weights_only=True)``; its ``state_dict`` entry is the model in this library's key
format, so :func:`davit.get_model` and ``tools/test.py`` load it directly.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint.io import CheckpointError, replacing

LATEST = "latest.pth"
BEST = "best.pth"


def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, flushed to disk, then renamed over
    ``path``: a crash mid-write leaves the previous ``path`` intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def link_atomic(source: Path, path: Path) -> None:
    """Make ``path`` the same file as ``source`` (a hard link, or a copy where links are not
    supported), replacing ``path`` atomically."""
    with replacing(path) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch and CUDA generator states as tensors and lists."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss),
                  float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by the trainer (weights-only loading); a clear error when the
    file is missing, unreadable or holds only weights."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist; pass a checkpoint written "
                                "by tools/train.py (work_dirs/<config>/latest.pth) or --resume auto")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot resume: {path} is not a readable checkpoint ({type(error).__name__}: "
                              f"{error}); resume from an earlier epoch_N.pth") from None
    needed = ("state_dict", "optimizer", "scheduler", "epoch", "iteration")
    if not isinstance(state, dict) or any(key not in state for key in needed):
        raise CheckpointError(f"cannot resume: {path} holds model weights but no training state "
                              "(optimizer, schedule, epoch); to start a new run from these "
                              "weights use load_from (--cfg-options load_from=PATH) instead")
    return state


def prune(work_dir: Path, pattern: str, keep: int) -> None:
    """Delete all but the ``keep`` newest files named like ``pattern`` (``epoch_{}.pth``)."""
    if keep < 1:
        return
    regex = re.compile(re.escape(pattern).replace(r"\{\}", r"(\d+)") + "$")
    found = sorted((int(m.group(1)), p) for p in work_dir.iterdir() if (m := regex.match(p.name)))
    for _, path in found[:-keep]:
        path.unlink(missing_ok=True)
