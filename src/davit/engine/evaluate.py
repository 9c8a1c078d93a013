"""Evaluate a DaViT checkpoint on a labelled image dataset, as mmpretrain's ``tools/test.py`` does.

:func:`evaluate` reads the model, the test pipeline, the test dataset and the evaluator from an
mmpretrain-style config, loads the checkpoint strictly and reports mmpretrain's
``accuracy/top1`` and ``accuracy/top5`` (percent). Under ``torchrun --nproc_per_node N`` each
process evaluates every N-th image and rank 0 computes the metrics from all predictions.

``--limit N`` evaluates N images drawn across the classes (:func:`limited`), never the first N
files, which in a class-folder dataset would be one or two classes and a meaningless accuracy.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..checkpoint.card import ModelCard
from ..checkpoint.load import load_checkpoint, load_into
from ..checkpoint.resolve import resolve_weights
from ..config import dump_config, load_config
from ..config.data import build_section_dataset, loader_spec, test_transform
from ..config.specs import EvaluatorSpec, ModelSpec, evaluator_spec, model_spec
from ..data import imagenet_classes
from ..data.datasets import LabelledImageDataset
from ..dtypes import AMP_DTYPES
from ..errors import InvalidArgumentError
from ..exported import exported_source, open_exported
from ..model import build_model
from ..records import error_record
from ..vis.drawing import ClassScore, PredictionPictures
from . import distributed
from .predict import accuracy, check_readable, gather_records, predict, report_k, sharded_loader
from .reports import save_confusion_matrix, write_per_class_csv
from .results import check_writable


@dataclass(frozen=True)
class EvaluationOptions:
    """What to evaluate and where the results go (``tools/test.py``'s options)."""

    config: str
    checkpoint: str
    cfg_options: Sequence[str] = ()
    work_dir: str | None = None
    out: str | None = None
    out_item: str = "pred"  # "pred" or "metrics"
    device: str | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    amp: str | None = None  # a key of AMP_DTYPES
    semantics: str | None = None
    show_dir: str | None = None
    confusion_matrix: bool = False
    strict: bool = False
    limit: int | None = None
    launcher: str | None = None


@dataclass
class _Evaluation:
    """The checked inputs of one evaluation, and its results once run."""

    cfg: dict
    spec: ModelSpec
    evaluator: EvaluatorSpec
    dataset: LabelledImageDataset
    device: torch.device
    world: int = 1
    records: list[dict] | None = None
    seconds: float = 0.0
    class_names: list[str] | None = None  # the checkpoint's card's, when it has them


def evaluate(options: EvaluationOptions) -> None:
    """Evaluate ``options.checkpoint``; rank 0 prints the metrics and writes the work-dir files.
    Every input is checked (config, data, checkpoint name) before a model is built."""
    if options.out and not options.out.endswith(".json"):
        raise InvalidArgumentError(f"--out {options.out}: only .json output is supported")
    if options.launcher == "pytorch" and "WORLD_SIZE" not in os.environ:
        raise InvalidArgumentError("--launcher pytorch needs torchrun: torchrun --nproc_per_node N "
                                   "tools/test.py ...")
    if os.environ.get("RANK", "0") == "0":  # where rank 0 writes, checked before any image is read
        if options.out:
            check_writable(Path(options.out).parent, f"--out {options.out}")
        for folder, option in ((options.work_dir, "--work-dir"), (options.show_dir, "--show-dir")):
            if folder:
                check_writable(folder, f"{option} {folder}")
    cfg = load_config(options.config, list(options.cfg_options))
    spec = model_spec(cfg.get("model") or {}, options.semantics)
    evaluator = evaluator_spec(cfg, spec.num_classes)
    transform = test_transform(cfg)
    dataset = build_section_dataset(cfg, "test_dataloader", transform, spec.num_classes)
    exported = exported_source(None, options.checkpoint)
    source = str(exported) if exported is not None else resolve_weights(options.checkpoint)
    if exported is not None and options.device not in (None, "cpu"):
        raise InvalidArgumentError(f"{exported.name} runs on the CPU (its runtime's); drop --device {options.device}")
    if options.limit is not None and options.limit < len(dataset):
        total, classes = len(dataset), len({label for _, label in dataset.samples})
        dataset = limited(dataset, options.limit)
        if os.environ.get("RANK", "0") == "0":  # rank 0 of torchrun, or the only process
            drawn = len({label for _, label in dataset.samples})
            print(f"--limit {options.limit}: evaluating {len(dataset)} of {total} images, drawn "
                  f"evenly from {drawn} of {classes} classes (the same images every run)",
                  file=sys.stderr)
    run = _Evaluation(cfg, spec, evaluator, dataset,
                      distributed.select_device("cpu" if exported is not None else options.device))
    distributed.init_distributed(run.device)
    run.world = distributed.get_world_size()
    _predict(run, options, source)
    if run.records is not None:
        _report(run, options)


def _predict(run: _Evaluation, options: EvaluationOptions, source: str) -> None:
    """Load the weights and predict this process's share of the images; rank 0 gets
    ``run.records`` for all of them."""
    main_process = distributed.is_main_process()
    model, card = _model(run, source, main_process)
    if card is not None and card.num_classes == run.spec.num_classes:
        run.class_names = list(card.class_names) if card.class_names is not None else None
    model.to(run.device).eval()

    length = len(run.dataset)  # already cut to --limit
    if main_process:
        print(f"evaluating {options.checkpoint} (embed_dims={list(run.spec.arch.embed_dims)}, "
              f"depths={list(run.spec.arch.depths)}, semantics={run.spec.semantics}) on {length} "
              f"images from {run.dataset.source}, {run.world} process(es) on {run.device.type}",
              file=sys.stderr)
        if run.evaluator.note:
            print(run.evaluator.note, file=sys.stderr)
    loader_cfg = loader_spec(run.cfg.get("test_dataloader") or {}, "test_dataloader")
    batch_size = options.batch_size or loader_cfg.batch_size
    workers = loader_cfg.num_workers if options.num_workers is None else options.num_workers
    loader = sharded_loader(run.dataset, length, batch_size, workers, run.device)
    started = time.perf_counter()
    amp = AMP_DTYPES[options.amp] if options.amp else None
    records = predict(model, loader, run.device, amp, report_k(run.evaluator, run.spec.num_classes),
                      options.strict, progress=main_process and sys.stderr.isatty())  # no bar in a log file
    records = gather_records(records)
    if not main_process:
        return
    if [r["index"] for r in records] != list(range(length)):
        raise RuntimeError("the processes did not return one prediction per image; this is a bug")
    for record in records:
        record["path"] = str(run.dataset.samples[record["index"]][0])
    check_readable(records, "images")
    run.records, run.seconds = records, time.perf_counter() - started


def _model(run: _Evaluation, source: str, main_process: bool) -> tuple[torch.nn.Module, ModelCard | None]:
    """The config's model with the checkpoint's weights, or the exported file ``source`` on its
    runtime (its class count must be the config's)."""
    if exported_source(None, source) is not None:
        exported = open_exported(source)
        if not exported.classifies or exported.num_classes != run.spec.num_classes:
            raise InvalidArgumentError(
                f"{exported.path.name} gives {exported.num_classes or exported.output} classes, the config's "
                f"model {run.spec.num_classes}; evaluate it with the config it was trained with")
        return exported, exported.card
    model = build_model(run.spec.arch, run.spec.num_classes, run.spec.semantics, **run.spec.backbone_options)
    with distributed.main_process_first():
        state_dict, card = load_checkpoint(source, progress=main_process)
    load_into(model, state_dict)
    return model, card


def limited(dataset: LabelledImageDataset, limit: int) -> LabelledImageDataset:
    """A copy of ``dataset`` with ``limit`` of its images, drawn across its classes: each class
    gets an equal share (one more for the first classes in label order when ``limit`` does not
    divide evenly; a class with too few images gives its rest to the others), and a class's share
    is evenly strided over its images in dataset order. Deterministic, no randomness: the same
    subset every run, kept in dataset order."""
    by_class: dict[int, list[int]] = {}
    for index, (_, label) in enumerate(dataset.samples):
        by_class.setdefault(label, []).append(index)
    labels = sorted(by_class)
    quota = dict.fromkeys(labels, 0)
    left = min(limit, len(dataset.samples))
    while left:
        for label in labels:
            if left and quota[label] < len(by_class[label]):
                quota[label] += 1
                left -= 1
    chosen = sorted(by_class[label][int((j + 0.5) * len(by_class[label]) / quota[label])]
                    for label in labels for j in range(quota[label]))
    subset = copy.copy(dataset)
    subset.samples = [dataset.samples[i] for i in chosen]
    if isinstance(getattr(dataset, "line_numbers", None), list):  # AnnotatedImageDataset
        subset.line_numbers = [dataset.line_numbers[i] for i in chosen]  # type: ignore[attr-defined]
    return subset


def _report(run: _Evaluation, options: EvaluationOptions) -> None:
    """Print the metrics and save the work-dir files and the optional outputs (rank 0)."""
    records = run.records or []
    failed = [{"path": r["path"], "error": r["error"]} for r in records if "error" in r]
    metrics = accuracy(records, run.evaluator)
    evaluated = len(records) - len(failed)
    class_names = run.dataset.classes
    model_names = run.class_names or _model_class_names(class_names, run.spec.num_classes)

    print("  ".join(f"{key}: {value:.4f}" for key, value in metrics.items()))
    print(f"evaluated {evaluated} images, failed {len(failed)} ({run.seconds:.1f} s, "
          f"{evaluated / max(run.seconds, 1e-9):.1f} images/s)")
    if failed:
        print(f"the metrics leave out {len(failed)} unreadable image(s):", file=sys.stderr)
        for item in failed:
            print(f"  {item['error']}", file=sys.stderr)

    work_dir = Path(options.work_dir) if options.work_dir else \
        Path("work_dirs") / Path(options.config).stem / time.strftime("%Y%m%d_%H%M%S")
    work_dir.mkdir(parents=True, exist_ok=True)
    dump_config(run.cfg, work_dir / Path(options.config).name)
    summary = {**metrics, "evaluated": evaluated, "failed": len(failed), "failed_images": failed,
               "config": options.config, "checkpoint": options.checkpoint,
               "semantics": run.spec.semantics, "processes": run.world,
               "device": run.device.type, "seconds": round(run.seconds, 3)}
    (work_dir / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    write_per_class_csv(records, class_names, run.evaluator, work_dir / "per_class_accuracy.csv")
    saved = [work_dir / "metrics.json", work_dir / "per_class_accuracy.csv"]
    plots = ([Path(options.show_dir)] if options.show_dir else []) + \
        ([work_dir] if options.confusion_matrix else [])
    for folder in plots:
        save_confusion_matrix(records, class_names, model_names, folder / "confusion_matrix.png")
        saved.append(folder / "confusion_matrix.png")
    if options.show_dir:
        drawn = _draw_predictions(records, model_names, class_names, Path(options.show_dir))
        print(f"drew the predictions of {drawn} images in {options.show_dir}", file=sys.stderr)
    if options.out:
        out = Path(options.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = summary if options.out_item == "metrics" else [_public(r, model_names) for r in records]
        out.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        saved.append(out)
    print("saved " + ", ".join(str(p) for p in saved), file=sys.stderr)


def _draw_predictions(records: list[dict], model_names: list[str] | None, class_names: list[str] | None,
                      folder: Path) -> int:
    """Save each readable image with its top-k classes and its true class drawn (mmpretrain's
    ``show_dir``); returns how many."""
    pictures = PredictionPictures(folder)
    done = [r for r in records if "error" not in r]
    for record in tqdm(done, unit="img", desc="show-dir", file=sys.stderr, dynamic_ncols=True,
                       disable=None):  # None: no bar when stderr is not a terminal
        topk = [ClassScore(label, score, model_names[label] if model_names else None)
                for label, score in zip(record["topk_labels"], record["topk_scores"])]
        truth, names = record["gt_label"], class_names or model_names
        pictures.save(record["path"], topk, (truth, names[truth] if names else None))
    return len(done)


def _model_class_names(dataset_classes: list[str] | None, num_classes: int) -> list[str] | None:
    """Names of the model's outputs: the dataset's when it has one per output, else ImageNet's
    for a 1000-class model."""
    if dataset_classes is not None and len(dataset_classes) == num_classes:
        return dataset_classes
    return imagenet_classes() if num_classes == 1000 else None


def _public(record: dict, names: list[str] | None) -> dict[str, Any]:
    """A record for ``--out``: the prediction record (:mod:`davit.records`) of the image, with its
    true label ``gt_label``."""
    where = {"image": record["path"], "index": record["index"], "gt_label": record["gt_label"]}
    if "error" in record:
        return {**where, **error_record(record["error"])}
    topk = [{"label": label, "score": score, **({"class": names[label]} if names else {})}
            for label, score in zip(record["topk_labels"], record["topk_scores"])]
    best = {"pred_label": record["pred_label"], "pred_score": record["pred_score"],
            **({"pred_class": names[record["pred_label"]]} if names else {})}
    return {**where, **best, "topk": topk}
