"""Training records: JSON lines, TensorBoard events and a PNG of the curves, in the work dir."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

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
        """Draw loss, learning rate and validation accuracy against the step into curves.png."""
        from matplotlib.figure import Figure

        train = [r for r in self.records if r["mode"] == "train"]
        val = [r for r in self.records if r["mode"] == "val"]
        fig = Figure(figsize=(13, 3.6))
        loss_ax, lr_ax, acc_ax = fig.subplots(1, 3)
        loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
        loss_ax.set(title="training loss", xlabel="step")
        lr_ax.plot([r["step"] for r in train], [r["lr"] for r in train], lw=1)
        lr_ax.set(title="learning rate", xlabel="step")
        for key in sorted({k for r in val for k in r if "accuracy/" in k}):
            points = [(r["epoch"], r[key]) for r in val if _finite(r.get(key))]
            if points:
                acc_ax.plot(*zip(*points), marker="o", ms=3, label=key)
        acc_ax.set(title="validation accuracy (%)", xlabel="epoch")
        if acc_ax.lines:
            acc_ax.legend()
        fig.tight_layout()
        tmp = self.curves.with_name(f".{self.curves.name}.tmp.png")
        fig.savefig(tmp, dpi=90)
        tmp.replace(self.curves)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
