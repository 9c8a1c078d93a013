"""Reports written into a work dir: per-class accuracy (CSV), a confusion matrix and the
training curves (PNG). matplotlib is imported only when a picture is drawn, so evaluation and
training run without it until one is asked for."""
from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path
from typing import Any

from ..config.specs import EvaluatorSpec
from ..errors import require
from .predict import hit

CONFUSION_CLASSES = 30


def write_per_class_csv(records: list[dict], class_names: list[str] | None,
                        evaluator: EvaluatorSpec, path: Path) -> None:
    """One row per ground-truth class in the data: image counts and top-k accuracy."""
    stats: dict[int, Counter] = {}
    for record in records:
        row = stats.setdefault(record["gt_label"], Counter())
        if "error" in record:
            row["failed"] += 1
            continue
        row["images"] += 1
        for k in evaluator.topk:
            row[f"top{k}"] += hit(record, k, evaluator.thr)
    header = ["label", "class", "images", "failed"]
    for k in evaluator.topk:
        header += [f"top{k}_correct", f"top{k}_accuracy"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for label in sorted(stats):
            row = stats[label]
            line = [label, _name(class_names, label), row["images"], row["failed"]]
            for k in evaluator.topk:
                correct = row[f"top{k}"]
                line += [correct, f"{100.0 * correct / row['images']:.4f}" if row["images"] else ""]
            writer.writerow(line)


def _name(names: list[str] | None, label: int) -> str:
    return names[label] if names is not None and 0 <= label < len(names) else str(label)


def _confused_labels(pairs: Counter, max_classes: int) -> tuple[list[int], str]:
    """The labels to show (the ``max_classes`` most confused when there are more) and a note for
    the title."""
    labels = sorted({label for pair in pairs for label in pair})
    if len(labels) <= max_classes:
        return labels, ""
    confused: Counter = Counter()
    for (true, pred), count in pairs.items():
        if true != pred:
            confused[true] += count
            confused[pred] += count
    ranked = [label for label, _ in sorted(confused.items(), key=lambda kv: (-kv[1], kv[0]))]
    ranked += [label for label in labels if label not in confused]
    return sorted(ranked[:max_classes]), f" ({max_classes} most-confused of {len(labels)} classes)"


def save_confusion_matrix(records: list[dict], true_names: list[str] | None,
                          pred_names: list[str] | None, path: Path,
                          max_classes: int = CONFUSION_CLASSES) -> None:
    """Plot true against predicted labels. With more than ``max_classes`` classes involved, only
    the ``max_classes`` most confused (most wrong predictions to or from them) are shown."""
    require("matplotlib", "train", "drawing the confusion matrix")
    import numpy as np
    from matplotlib.figure import Figure

    pairs = Counter((r["gt_label"], r["pred_label"]) for r in records if "error" not in r)
    labels, note = _confused_labels(pairs, max_classes)
    position = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for (true, pred), count in pairs.items():
        if true in position and pred in position:
            matrix[position[true], position[pred]] += count

    size = 3 + 0.35 * len(labels)
    fig = Figure(figsize=(size + 2, size))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(len(labels)), [_short(_name(pred_names, label)) for label in labels],
                  rotation=90)
    ax.set_yticks(range(len(labels)), [_short(_name(true_names, label)) for label in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix, {sum(pairs.values())} images{note}")
    for i in range(len(labels)):
        for j in range(len(labels)):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _short(name: str, length: int = 24) -> str:
    return name if len(name) <= length else name[:length - 1] + "…"


def plot_training_curves(records: list[dict[str, Any]], path: Path) -> None:
    """Draw loss, learning rate and validation accuracy against the step into ``path``
    (replaced atomically, so a viewer never sees half a picture)."""
    require("matplotlib", "train", "drawing the training curves")
    from matplotlib.figure import Figure

    train = [r for r in records if r["mode"] == "train"]
    val = [r for r in records if r["mode"] == "val"]
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
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(path)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
