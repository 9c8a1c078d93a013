"""The state of a training run: what it updates, and the counters a checkpoint records."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel


@dataclass
class TrainState:
    """The model and the objects that train it, with the run's counters.

    ``model`` is the bare classifier (its weights are what checkpoints hold); ``forward`` is what
    a training step calls (``model``, or it wrapped in DDP and/or ``torch.compile``); ``ddp`` is
    the DDP wrapper of a multi-process run, whose ``no_sync`` skips gradient exchange between
    accumulated batches.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None = None
    ema: AveragedModel | None = None
    forward: nn.Module | None = None
    ddp: DistributedDataParallel | None = None
    epoch: int = 0          # epochs completed
    epoch_iter: int = 0     # batches done in the current epoch (a multiple of the accumulation)
    step: int = 0           # optimizer steps done
    best: dict[str, Any] = field(default_factory=dict)
    last_checkpoint: Path | None = None

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = self.model
