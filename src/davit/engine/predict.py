"""Evaluation primitives shared by ``tools/test.py``, validation during training and
:func:`davit.inference_model`: class probabilities, per-image predictions over a loader, and
mmpretrain's Accuracy."""
from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config.specs import EvaluatorSpec
from ..data.datasets import collate_samples
from ..errors import ImageLoadError
from . import distributed


def class_probabilities(model: nn.Module, images: Tensor, amp: torch.dtype | None = None) -> Tensor:
    """Softmax class probabilities (float32, on the images' device) of a batch of preprocessed
    images, computed without autograd and, with ``amp``, under autocast in that dtype."""
    with torch.inference_mode(), torch.autocast(images.device.type, dtype=amp, enabled=amp is not None):
        logits = model(images)
    return logits.float().softmax(dim=-1)


def sharded_loader(dataset: Dataset, length: int, batch_size: int, num_workers: int,
                   device: torch.device, persistent_workers: bool = False,
                   worker_init_fn: Callable[[int], None] | None = None) -> DataLoader:
    """Batches of this process's share (every N-th of N processes) of the first ``length``
    images, in order, as :func:`predict` takes them."""
    sampler = distributed.ShardSampler(length, distributed.get_rank(), distributed.get_world_size())
    workers = min(num_workers, math.ceil(len(sampler) / batch_size))  # no idle workers
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_samples, pin_memory=device.type == "cuda",
                      worker_init_fn=worker_init_fn, persistent_workers=persistent_workers and workers > 0)


def report_k(evaluator: EvaluatorSpec, num_classes: int) -> int:
    """How many top labels a record keeps: enough for the evaluator and at least 5."""
    return min(max(max(evaluator.topk), 5), num_classes)


def predict(model: nn.Module, loader: DataLoader, device: torch.device,
            amp: torch.dtype | None, k: int, strict: bool, progress: bool) -> list[dict]:
    """Per-image records for the images ``loader`` yields: the label, the top-1 prediction and the
    ``k`` best labels and scores, or the error for an image that could not be read."""
    records = []
    bar = tqdm(total=len(loader.sampler), unit="img", desc="test", disable=not progress,  # type: ignore[arg-type]
               file=sys.stderr, dynamic_ncols=True)
    with bar:
        for batch in loader:
            for index, label, error in batch.failures:
                if strict:
                    raise ImageLoadError(f"{error} (--strict stops at the first unreadable image)")
                bar.write(f"warning: skipped an unreadable image: {error}", file=sys.stderr)
                records.append({"index": index, "gt_label": label, "error": error})
            if batch.images is not None:
                scores = class_probabilities(model, batch.images.to(device, non_blocking=True), amp)
                top_scores, top_labels = scores.topk(k, dim=1)
                pred_scores, pred_labels = scores.max(dim=1)
                rows = zip(batch.indices, batch.labels.tolist(), pred_labels.tolist(),
                           pred_scores.tolist(), top_labels.tolist(), top_scores.tolist())
                for index, label, pred, score, labels, values in rows:
                    records.append({"index": index, "gt_label": label, "pred_label": pred,
                                    "pred_score": score, "topk_labels": labels,
                                    "topk_scores": values})
            bar.update(len(batch.indices) + len(batch.failures))
    return records


def gather_records(records: list[dict]) -> list[dict]:
    """Every process's records, in image order."""
    gathered = distributed.gather_objects(records)
    return sorted((r for part in gathered for r in part), key=lambda r: r["index"])


def check_readable(records: list[dict], what: str) -> None:
    """Refuse a run in which no image could be read (there is nothing to measure)."""
    if all("error" in r for r in records):
        raise ImageLoadError(f"none of the {len(records)} {what} could be read; the first error: "
                             f"{records[0]['error']}")


def accuracy(records: list[dict], evaluator: EvaluatorSpec) -> dict[str, float]:
    """mmpretrain's Accuracy over the evaluated images (at least one): a top-k hit needs the true
    label among the k best and, with a threshold, a score above it."""
    done = [r for r in records if "error" not in r]
    metrics = {}
    for k in evaluator.topk:
        hits = sum(hit(r, k, evaluator.thr) for r in done)
        metrics[f"accuracy/top{k}"] = 100.0 * hits / len(done)
    return metrics


def hit(record: dict, k: int, thr: float | None) -> bool:
    """Whether the record's true label is among its ``k`` best (with a score above ``thr``)."""
    pairs = zip(record["topk_labels"][:k], record["topk_scores"][:k])
    return any(label == record["gt_label"] and (thr is None or score > thr) for label, score in pairs)
