"""The epoch loop: training steps, validation, checkpoints and records.

:class:`Trainer` runs :meth:`~Trainer.train_one_epoch` and validation for each epoch of a
:class:`~davit.engine.state.TrainState`, saving a checkpoint after each. Everything collective
(the stop check, loss checks, checkpoint saving) is called by every process together.
"""
from __future__ import annotations

import logging
import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config.specs import EvaluatorSpec
from ..config.training import RuntimeSpec
from ..data.train_transforms import BatchAugment
from ..errors import TrainError
from . import distributed
from .predict import accuracy, check_readable, predict, report_k
from .recorder import TrainRecorder
from .sampling import TrainSampler
from .session import Interrupted, StopFlag
from .state import TrainState
from .train_checkpoint import BEST, LATEST, prune, save_training_checkpoint, save_weights_checkpoint

logger = logging.getLogger("davit")


@dataclass(frozen=True)
class TrainPlan:
    """The fixed settings of a run."""

    runtime: RuntimeSpec
    work_dir: Path
    device: torch.device
    world: int
    rank: int
    batch_size: int
    accumulation: int
    clip_grad: float | None
    label_smoothing: float
    amp: torch.dtype | None
    num_classes: int
    steps_per_epoch: int
    batches_per_epoch: int
    checkpoint_iters: int | None
    meta: dict[str, Any]  # saved in every checkpoint


@dataclass(frozen=True)
class TrainData:
    """The training and validation data of a run."""

    loader: DataLoader
    sampler: TrainSampler
    batch_augment: BatchAugment | None
    val_loader: DataLoader | None
    evaluator: EvaluatorSpec | None


class Trainer:
    """Trains ``state`` for the plan's epochs; rank 0 logs, records and writes checkpoints."""

    def __init__(self, state: TrainState, plan: TrainPlan, data: TrainData,
                 recorder: TrainRecorder | None, stop: StopFlag) -> None:
        self.state, self.plan, self.data = state, plan, data
        self.recorder, self.stop = recorder, stop
        self.main = plan.rank == 0
        self.unreadable: set[str] = set()
        self.started = time.perf_counter()
        self.start_step = state.step

    def train(self) -> None:
        """Run the remaining epochs; raises :class:`Interrupted` after SIGINT/SIGTERM."""
        s, max_epochs = self.state, self.plan.runtime.max_epochs
        if s.epoch >= max_epochs:
            logger.info("the run already has its %d epochs; nothing to do", max_epochs)
            return
        evaluator = self.data.evaluator
        if self.main and evaluator is not None and evaluator.note and self.data.val_loader is not None:
            logger.info("%s", evaluator.note)  # top-k above the class count, left out
        while s.epoch < max_epochs:
            self.train_one_epoch()
            s.epoch, s.epoch_iter = s.epoch + 1, 0
            stopping = self._stop_requested() and s.epoch < max_epochs
            metrics = self.validate() if self._validates(s.epoch) and not stopping else {}
            self._save_epoch(metrics)
            if self.recorder is not None:
                self.recorder.plot()
            if stopping or (s.epoch < max_epochs and self._stop_requested()):
                self._interrupt()
        if self.main:
            best = s.best
            logger.info("done: %d epochs in %s%s; checkpoints in %s", max_epochs,
                        timedelta(seconds=round(time.perf_counter() - self.started)),
                        "".join(f", best {k} {v:.2f} at epoch {best['epoch']}"
                                for k, v in best.items() if k != "epoch"), self.plan.work_dir)

    def _validates(self, epoch: int) -> bool:
        runtime = self.plan.runtime
        return (self.data.val_loader is not None and epoch >= runtime.val_begin
                and (epoch % runtime.val_interval == 0 or epoch == runtime.max_epochs))

    # -- training ---------------------------------------------------------------------------
    def train_one_epoch(self) -> None:
        """Train on the rest of the current epoch (all of it, unless resumed in its middle)."""
        s, plan = self.state, self.plan
        s.model.train()
        self.data.sampler.set_epoch(s.epoch)
        self.data.sampler.set_start(s.epoch_iter * plan.batch_size)
        window = torch.zeros(3, dtype=torch.float64)  # loss sum, batches, images since last log
        window_start = epoch_started = time.perf_counter()
        total = self.data.sampler.num_samples
        bar = tqdm(total=total, initial=min(s.epoch_iter * plan.batch_size, total), unit="img",
                   desc=f"epoch {s.epoch + 1}/{plan.runtime.max_epochs}", file=sys.stderr,
                   dynamic_ncols=True, disable=not (self.main and sys.stderr.isatty()), leave=False)
        params = [q for q in s.model.parameters() if q.requires_grad]
        with bar:
            for images, labels, errors in self.data.loader:
                self._report_unreadable(errors)
                group_start = s.epoch_iter - s.epoch_iter % plan.accumulation
                group_size = min(plan.accumulation, plan.batches_per_epoch - group_start)
                last_in_group = s.epoch_iter - group_start == group_size - 1
                loss = self._forward_backward(images, labels, group_size, last_in_group)
                s.epoch_iter += 1
                window += torch.tensor([loss, 1.0, len(images)], dtype=torch.float64)
                bar.update(len(images))
                if not last_in_group:
                    continue
                lr = s.optimizer.param_groups[0]["lr"]
                self._optimizer_step(params)
                bar.set_postfix(loss=f"{window[0] / window[1]:.4f}", lr=f"{lr:.2e}", refresh=False)
                last_step = s.epoch_iter == plan.batches_per_epoch
                if s.step % plan.runtime.log_interval == 0 or last_step:
                    window = self._log_train(window, time.perf_counter() - window_start, lr)
                    window_start = time.perf_counter()
                if self._after_step(last_step):
                    break  # the epoch's checkpoint is saved next
        count = len(set().union(*distributed.gather_objects(self.unreadable)))
        if self.main:
            logger.info("Epoch(train) [%d/%d] done in %s%s", s.epoch + 1, plan.runtime.max_epochs,
                        timedelta(seconds=round(time.perf_counter() - epoch_started)),
                        f"; {count} unreadable training image(s) skipped so far" if count else "")

    def _after_step(self, last_step: bool) -> bool:
        """Handle a stop request and --checkpoint-iters after an optimizer step; True when the
        epoch should end now (a stop request at its last step)."""
        s, plan = self.state, self.plan
        if self._stop_requested():
            if last_step:
                return True
            self._save(f"iter_{s.step}.pth", {})
            self._interrupt()
        if plan.checkpoint_iters and s.step % plan.checkpoint_iters == 0 and not last_step:
            self._save(f"iter_{s.step}.pth", {})
            if self.main and plan.runtime.max_keep > 0:
                prune(plan.work_dir, "iter_{}.pth", plan.runtime.max_keep)
        return False

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor, group_size: int,
                          last_in_group: bool) -> float:
        s, plan = self.state, self.plan
        images = images.to(plan.device, non_blocking=True)
        targets = labels.to(plan.device, non_blocking=True)
        if self.data.batch_augment is not None:
            images, targets = self.data.batch_augment(images, targets)
        sync = nullcontext() if last_in_group or s.ddp is None else s.ddp.no_sync()
        with sync:
            with torch.autocast(plan.device.type, dtype=plan.amp, enabled=plan.amp is not None):
                logits = s.forward(images)  # type: ignore[misc]
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=plan.label_smoothing)
            value = loss.item()
            if self._any_rank(not math.isfinite(value)):
                self._diverged(value if not math.isfinite(value) else float("nan"))
            loss = loss / group_size
            (s.scaler.scale(loss) if s.scaler is not None else loss).backward()
        return value

    def _optimizer_step(self, params: list[nn.Parameter]) -> None:
        s, clip = self.state, self.plan.clip_grad
        if s.scaler is not None:
            if clip is not None:
                s.scaler.unscale_(s.optimizer)
                torch.nn.utils.clip_grad_norm_(params, clip)
            s.scaler.step(s.optimizer)
            s.scaler.update()
        else:
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        s.scheduler.step()
        if s.ema is not None:
            s.ema.update_parameters(s.model)
        s.step += 1

    def _stop_requested(self) -> bool:
        """Whether any process received SIGINT/SIGTERM (every process must call this together)."""
        stop = self._any_rank(self.stop.signum is not None)
        if stop and self.stop.signum is None:
            self.stop.signum = signal.SIGTERM
        return stop

    def _any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any process (every process must call this together)."""
        if self.plan.world == 1:
            return flag
        device = self.plan.device if self.plan.device.type == "cuda" else "cpu"
        value = torch.tensor([float(flag)], device=device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def _diverged(self, value: float) -> None:
        s = self.state
        last = (f"the last good checkpoint is {s.last_checkpoint} (epoch {s.epoch}, kept intact)"
                if s.last_checkpoint else "no checkpoint had been saved yet")
        raise TrainError(
            f"the training loss became {value} at epoch {s.epoch + 1}, batch {s.epoch_iter + 1} "
            f"(step {s.step + 1}); stopping without saving, {last}. Lower the learning rate "
            "(optim_wrapper.optimizer.lr), clip gradients (--clip-grad 1.0), or use --amp bf16 "
            "instead of fp16, then resume with --resume PATH")

    def _report_unreadable(self, errors: list[str]) -> None:
        for error in errors:
            if error not in self.unreadable:
                self.unreadable.add(error)
                logger.warning("skipped an unreadable training image: %s", error)

    def _log_train(self, window: torch.Tensor, seconds: float, lr: float) -> torch.Tensor:
        """Log the loss and speed since the last log (over all processes); a fresh window."""
        if self.plan.world > 1:
            window = window.to(self.plan.device)
            torch.distributed.all_reduce(window)
            window = window.cpu()
        loss_sum, batches, images = window.tolist()
        s, plan = self.state, self.plan
        loss = loss_sum / max(batches, 1)
        rate = images / max(seconds, 1e-9)
        remaining = plan.runtime.max_epochs * plan.steps_per_epoch - s.step
        eta = (time.perf_counter() - self.started) / max(s.step - self.start_step, 1) * remaining
        if self.main and self.recorder is not None:
            logger.info("Epoch(train) [%d/%d][%d/%d]  lr: %.4e  loss: %.4f  images/s: %.1f  eta: %s",
                        s.epoch + 1, plan.runtime.max_epochs,
                        math.ceil(s.epoch_iter / plan.accumulation), plan.steps_per_epoch, lr,
                        loss, rate, timedelta(seconds=round(eta)))
            self.recorder.log({"mode": "train", "epoch": s.epoch + 1, "step": s.step, "lr": lr,
                               "loss": loss, "images_per_s": rate, "eta_s": round(eta, 1)})
        return torch.zeros(3, dtype=torch.float64)

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Accuracy of the model (and of its EMA) on the validation data."""
        s = self.state
        metrics = self._accuracy(s.model)
        if s.ema is not None:
            metrics.update({f"ema_{k}": v for k, v in self._accuracy(s.ema.module).items()})
        s.model.train()
        if self.main and self.recorder is not None:
            logger.info("Epoch(val) [%d/%d]  %s", s.epoch, self.plan.runtime.max_epochs,
                        "  ".join(f"{k}: {v:.2f}" for k, v in metrics.items()))
            self.recorder.log({"mode": "val", "epoch": s.epoch, "step": s.step, **metrics})
        return metrics

    def _accuracy(self, model: nn.Module) -> dict[str, float]:
        assert self.data.val_loader is not None and self.data.evaluator is not None
        model.eval()
        k = report_k(self.data.evaluator, self.plan.num_classes)
        records = predict(model, self.data.val_loader, self.plan.device, self.plan.amp, k,
                          strict=False, progress=False)
        records = [r for part in distributed.gather_objects(records) for r in part]
        check_readable(records, "validation images")
        return accuracy(records, self.data.evaluator)

    # -- checkpoints ---------------------------------------------------------------------------
    def _save_epoch(self, metrics: dict[str, float]) -> None:
        """After an epoch: the full state in ``latest.pth`` (and, every ``interval`` epochs and
        at the last one, as ``epoch_N.pth`` when ``max_keep_ckpts`` is not 0, pruned to the
        newest ``max_keep_ckpts``); the weights alone in ``best.pth`` when the ``save_best``
        metric improved."""
        s, plan = self.state, self.plan
        metric = plan.runtime.save_best
        improved = metric is not None and metric in metrics and \
            metrics[metric] > s.best.get(metric, -1.0)
        if improved and metric is not None:
            s.best = {metric: metrics[metric], "epoch": s.epoch}
        periodic = s.epoch % plan.runtime.checkpoint_interval == 0 or s.epoch == plan.runtime.max_epochs
        keep = plan.runtime.max_keep
        self._save(f"epoch_{s.epoch}.pth" if periodic and keep != 0 else None, metrics)
        if improved:
            save_weights_checkpoint(s, plan.work_dir / BEST, plan.meta, metrics)
        if self.main and periodic and keep > 0:
            prune(plan.work_dir, "epoch_{}.pth", keep)

    def _save(self, name: str | None, metrics: dict[str, float]) -> Path:
        """Write a checkpoint as ``name`` (and make latest.pth the same file), or straight to
        latest.pth."""
        path = self.plan.work_dir / (name or LATEST)
        save_training_checkpoint(self.state, path, self.plan.meta, metrics)
        return path

    def _interrupt(self) -> None:
        signum = self.stop.signum or signal.SIGTERM
        s = self.state
        if self.main:
            logger.warning("stopped by %s at epoch %d, step %d: saved %s; continue with --resume "
                           "auto (or --resume %s)", signal.Signals(signum).name, s.epoch, s.step,
                           s.last_checkpoint, s.last_checkpoint)
        raise Interrupted(signum)
