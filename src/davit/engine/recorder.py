"""Training records: JSON lines, TensorBoard events and a PNG of the curves (drawn by
:mod:`.reports`), in the work dir."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .reports import plot_training_curves

logger = logging.getLogger("davit")

SCALARS = "scalars.jsonl"
CURVES = "curves.png"


class TrainRecorder:
    """Appends every logged record to ``scalars.jsonl``, mirrors the numbers to TensorBoard
    (``tensorboard/``) when the ``tensorboard`` package is installed, and redraws ``curves.png``.

    A record is a dict with ``mode`` (``train`` or ``val``), ``step`` (optimizer steps so far),
    ``epoch`` and numbers. On resume, ``step`` keeps the curves of the earlier run up to the
    resumed step and drops what came after it.
    """

    def __init__(self, work_dir: Path, resume_step: int | None = None) -> None:
        self.path = work_dir / SCALARS
        self.curves = work_dir / CURVES
        self.records: list[dict[str, Any]] = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("step", 0) <= resume_step:
                    self.records.append(record)
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.info("TensorBoard is not installed, so no event files are written "
                        "(pip install tensorboard to get them)")
        else:
            self.writer = SummaryWriter(str(work_dir / "tensorboard"), purge_step=resume_step)

    def log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("mode", "step", "epoch") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{record['mode']}/{key}", value, record["step"])

    def plot(self) -> None:
        """Redraw curves.png from every record so far."""
        plot_training_curves(self.records, self.curves)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

