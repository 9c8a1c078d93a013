"""The layout of training checkpoints: what is saved, how it is written and how a run resumes.

A checkpoint is a dict of tensors and plain containers, readable with
``torch.load(weights_only=True)``: ``state_dict`` (the model in this library's key format, so
:func:`davit.get_model` and ``tools/test.py`` load it directly), ``optimizer``, ``scheduler``,
``scaler``, ``state_dict_ema`` and ``ema_n_averaged``, the counters ``epoch``, ``epoch_iter``
and ``iteration``, ``rng`` (every process's generator states), ``best``, ``metrics`` and
``meta`` (seed, process count, batch size, model, config and the model card, see
:mod:`davit.checkpoint.card`). Files are written atomically.

The work dir holds:

* ``latest.pth``: the full, resumable state after the newest epoch (or ``--checkpoint-iters``
  step); ``--resume auto`` reads it.
* ``best.pth``: what inference needs only (``state_dict``, ``meta`` with the model card,
  ``epoch``, ``best``, ``metrics``; no optimizer, schedule or random states), written as its own
  file whenever the ``default_hooks.checkpoint.save_best`` metric ('auto': accuracy/top1)
  improves; none with ``save_best=None``. :func:`davit.get_model` and ``tools/test.py`` load it.
* ``epoch_N.pth``: full states every ``interval`` epochs, the newest ``max_keep_ckpts`` of them
  kept (-1: all). Without ``max_keep_ckpts`` in the config none are written (each is 331 MB for
  DaViT-T): ``latest.pth`` and ``best.pth`` only. ``latest.pth`` is a hard link to the newest
  ``epoch_N.pth`` (or ``iter_N.pth``) where one is written.
"""
from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..checkpoint.card import config_card
from ..checkpoint.io import replacing
from ..checkpoint.load import load_into
from ..config import format_config
from ..config.specs import ModelSpec
from ..errors import CheckpointError, CheckpointMismatchError, CheckpointNotFoundError, ConfigError, TrainError
from . import distributed
from .state import TrainState

logger = logging.getLogger("davit")

LATEST = "latest.pth"
BEST = "best.pth"


def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, flushed to disk, then renamed over
    ``path``: a crash mid-write leaves the previous ``path`` intact. A failed write (a full disk,
    no permission) removes the temporary file and is one :class:`TrainError` line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as error:  # torch.save reports a failed write as a RuntimeError
        reason = error.strerror if isinstance(error, OSError) and error.strerror else \
            str(error).splitlines()[0][:200]
        raise TrainError(f"cannot write the checkpoint {path} ({reason}); free disk space or give a --work-dir "
                         "that can be written, then resume from the last complete checkpoint (--resume)") from None


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
    numpy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    kind, keys, position, has_gauss, cached = numpy_state
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
        raise CheckpointNotFoundError(
            f"cannot resume: {path} does not exist; pass a checkpoint written by tools/train.py "
            "(work_dirs/<config>/latest.pth) or --resume auto")
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


def resume_source(requested: str | None, cfg_resume: Any, load_from: Any, work_dir: Path) -> Path | None:
    """The checkpoint to resume from: --resume PATH, or latest.pth for --resume auto (and for the
    config's ``resume=True``, which like mmengine's takes ``load_from`` when given)."""
    if requested is None and cfg_resume:
        requested = str(load_from) if load_from else "auto"
    if requested is None:
        return None
    if requested != "auto":
        return Path(requested).expanduser()
    latest = work_dir / LATEST
    if latest.is_file():
        return latest
    logger.info("--resume auto: no %s in %s, starting a new run", LATEST, work_dir)
    return None


def run_meta(seed: int, world: int, batch_size: int, spec: ModelSpec, cfg: dict,
             class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``meta`` entry: what a resumed run needs to know, and the model card (the training
    set's class names, the test or validation pipeline's preprocessing) with which
    :func:`davit.get_model` and ``davit predict`` rebuild and feed the model."""
    try:
        card = config_card(spec, cfg, class_names)
    except ConfigError as error:
        logger.warning("the checkpoints record the default preprocessing: %s", error)
        card = config_card(spec, {}, class_names)
    return {"seed": seed, "world_size": world, "batch_size": batch_size,
            "arch": spec.arch.to_dict(), "num_classes": spec.num_classes,
            "semantics": spec.semantics, "config": format_config(cfg),
            "torch": str(torch.__version__), **card.to_metadata()}


def save_training_checkpoint(state: TrainState, path: Path, meta: dict[str, Any],
                             metrics: dict[str, float]) -> None:
    """Write ``state`` to ``path`` and make ``latest.pth`` (beside it) the same file. Every
    process must call this: each sends its random states to rank 0, which writes."""
    states = distributed.gather_objects(rng_state())
    if distributed.is_main_process():
        ema = state.ema
        checkpoint = {
            "meta": meta,
            "state_dict": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict() if state.scaler is not None else {},
            "state_dict_ema": ema.module.state_dict() if ema is not None else None,
            "ema_n_averaged": ema.n_averaged if ema is not None else None,
            "epoch": state.epoch, "epoch_iter": state.epoch_iter, "iteration": state.step,
            "rng": states, "best": state.best, "metrics": metrics,
        }
        save_atomic(checkpoint, path)
        latest = path.parent / LATEST
        if path != latest:
            link_atomic(path, latest)
    distributed.barrier()
    state.last_checkpoint = path


def save_weights_checkpoint(state: TrainState, path: Path, meta: dict[str, Any],
                            metrics: dict[str, float]) -> None:
    """Write what inference needs only (the model's ``state_dict``, ``meta`` with the model
    card, the epoch and metrics) to ``path``, a file of its own. Rank 0 writes."""
    if distributed.is_main_process():
        save_atomic({"meta": meta, "state_dict": state.model.state_dict(), "epoch": state.epoch,
                     "iteration": state.step, "best": state.best, "metrics": metrics}, path)
    distributed.barrier()


def restore(checkpoint: dict, path: Path, state: TrainState, world: int, batch_size: int) -> None:
    """Load a training checkpoint (see :func:`load_training_checkpoint`) into ``state``."""
    try:
        load_into(state.model, checkpoint["state_dict"])
    except CheckpointMismatchError as error:
        raise CheckpointError(f"cannot resume from {path}: it was written for another model. "
                              f"{error}") from None
    try:
        state.optimizer.load_state_dict(checkpoint["optimizer"])
    except ValueError as error:
        raise CheckpointError(f"cannot resume from {path}: its optimizer state does not fit this "
                              f"run ({error}); the frozen stages or parameter groups changed. "
                              "Start a new run with load_from instead") from None
    state.scheduler.load_state_dict(checkpoint["scheduler"])
    if state.scaler is not None and checkpoint.get("scaler"):
        state.scaler.load_state_dict(checkpoint["scaler"])
    if state.ema is not None:
        if checkpoint.get("state_dict_ema") is not None:
            state.ema.module.load_state_dict(checkpoint["state_dict_ema"])
            state.ema.n_averaged.copy_(checkpoint["ema_n_averaged"])
        else:
            logger.warning("%s has no EMA weights: the average starts from the resumed weights", path)
    meta = checkpoint["meta"]
    epoch_iter = int(checkpoint["epoch_iter"])
    if epoch_iter and (meta.get("world_size") != world or meta.get("batch_size") != batch_size):
        logger.warning("%s was saved in the middle of an epoch by a run with another process "
                       "count or batch size: the epoch restarts from its first batch", path)
        epoch_iter = 0
    state.epoch, state.epoch_iter = int(checkpoint["epoch"]), epoch_iter
    state.step, state.best = int(checkpoint["iteration"]), dict(checkpoint.get("best") or {})
    state.last_checkpoint = path
