"""Evaluate a DaViT checkpoint on a labelled image dataset, as mmpretrain's ``tools/test.py`` does.

``tools/test.py CONFIG CHECKPOINT`` reads the model, the test pipeline, the test dataset and the
evaluator from an mmpretrain-style config, loads the checkpoint strictly and reports mmpretrain's
``accuracy/top1`` and ``accuracy/top5`` (percent). Under ``torchrun --nproc_per_node N`` each
process evaluates every N-th image and rank 0 computes the metrics from all predictions.
"""
from __future__ import annotations

import argparse
import csv
import inspect
import json
import logging
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint.load import load_into, read_checkpoint
from ..config import ConfigError, dump_config, load_config
from ..data import ImageLoadError, TestTransform, build_test_transform, imagenet_classes
from ..data.datasets import LabelledImageDataset, build_dataset, collate_samples
from ..model import SEMANTICS, DaViT, DaViTClassifier
from ..model.archs import DaViTArch, resolve_arch
from ..zoo import MODELS
from . import distributed
from ..argtypes import non_negative_int, positive_int

logger = logging.getLogger("davit")

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Backbone options of the config that DaViT takes (besides ``type`` and ``arch``).
BACKBONE_OPTIONS = sorted(set(inspect.signature(DaViT.__init__).parameters) - {"self", "arch", "semantics"})
CONFUSION_CLASSES = 30


@dataclass(frozen=True)
class ModelSpec:
    """What the config's ``model`` dict asks for, checked before anything is built."""

    arch: DaViTArch
    num_classes: int
    semantics: str
    backbone_options: dict


@dataclass(frozen=True)
class EvaluatorSpec:
    """The config's ``Accuracy`` evaluator: which top-k to report and the score threshold."""

    topk: tuple[int, ...]
    thr: float | None


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Evaluate a DaViT checkpoint on a dataset (mmpretrain's tools/test.py).")
    parser.add_argument("config", help="config file, e.g. configs/davit/davit-tiny_4xb256_in1k.py")
    parser.add_argument("checkpoint", help="checkpoint path, http(s) URL, hf-hub: name or model "
                                           "name (davit list --pretrained)")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config settings, e.g. test_dataloader.batch_size=32")
    parser.add_argument("--work-dir", help="where to save the config, metrics and per-class "
                                           "accuracy (default: work_dirs/<config name>/<time>)")
    parser.add_argument("--out", help="also write a JSON file with the metrics or the predictions")
    parser.add_argument("--out-item", choices=["metrics", "pred"], default="pred",
                        help="what --out holds: per-image predictions (default, as mmpretrain) "
                             "or the metrics")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available); "
                                          "under torchrun each process takes GPU LOCAL_RANK")
    parser.add_argument("--batch-size", type=positive_int,
                        help="images per batch and process (default: test_dataloader.batch_size)")
    parser.add_argument("--num-workers", type=non_negative_int,
                        help="data loading processes (default: test_dataloader.num_workers)")
    parser.add_argument("--amp", nargs="?", const="fp16", choices=sorted(AMP_DTYPES),
                        help="run the model under autocast in this precision (bare --amp: fp16)")
    parser.add_argument("--semantics", choices=SEMANTICS,
                        help="override the config's model.semantics")
    parser.add_argument("--show-dir", help="save a confusion-matrix PNG in this folder")
    parser.add_argument("--confusion-matrix", action="store_true",
                        help="save a confusion-matrix PNG in the work dir")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first image that cannot be read (default: count it "
                             "as failed and go on)")
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N images")
    parser.add_argument("--launcher", choices=["none", "pytorch"],
                        help="accepted for mmpretrain compatibility; torchrun's environment "
                             "decides, and 'pytorch' requires it")
    return parser


def model_spec(model_cfg: dict, semantics: str | None = None) -> ModelSpec:
    """Check the config's ``model`` dict (an ImageClassifier of a DaViT backbone, global average
    pooling and a LinearClsHead); ``semantics`` overrides its ``semantics`` key."""
    _expect_type(model_cfg, "ImageClassifier", "model")
    backbone = dict(model_cfg.get("backbone") or {})
    _expect_type(backbone, "DaViT", "model.backbone")
    _expect_type(model_cfg.get("neck") or {}, "GlobalAveragePooling", "model.neck")
    head = model_cfg.get("head") or {}
    _expect_type(head, "LinearClsHead", "model.head")
    try:
        arch = resolve_arch(backbone.get("arch", "tiny"))
    except (ValueError, TypeError) as error:
        raise ConfigError(f"model.backbone.arch: {error}") from None
    options = {k: v for k, v in backbone.items() if k not in ("type", "arch")}
    unknown = sorted(set(options) - set(BACKBONE_OPTIONS))
    if unknown:
        raise ConfigError(f"model.backbone has options DaViT does not take: {unknown}; "
                          f"supported: {BACKBONE_OPTIONS}")
    num_classes = head.get("num_classes")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"model.head.num_classes must be a positive integer, got {num_classes!r}")
    in_channels = head.get("in_channels", arch.embed_dims[-1])
    if in_channels != arch.embed_dims[-1]:
        raise ConfigError(f"model.head.in_channels is {in_channels} but the backbone's last stage "
                          f"has {arch.embed_dims[-1]} channels; set "
                          f"model.head.in_channels={arch.embed_dims[-1]}")
    chosen = semantics or model_cfg.get("semantics", "official")
    if chosen not in SEMANTICS:
        raise ConfigError(f"model.semantics must be one of {list(SEMANTICS)}, got {chosen!r}")
    return ModelSpec(arch, num_classes, chosen, options)


def _expect_type(cfg: dict, expected: str, where: str) -> None:
    found = cfg.get("type", expected)
    if found != expected:
        raise ConfigError(f"{where}.type is {found!r}; this evaluator supports {expected!r} only")


def build_model(spec: ModelSpec) -> DaViTClassifier:
    return DaViTClassifier(spec.arch, num_classes=spec.num_classes, semantics=spec.semantics,
                           **spec.backbone_options)


def transform_from_config(cfg: dict) -> TestTransform:
    """The test transform the config's data preprocessor and test pipeline describe.

    The pipeline must be ``LoadImageFromFile``, ``ResizeEdge`` (short edge, Pillow backend),
    ``CenterCrop`` and ``PackInputs``, as in mmpretrain's DaViT configs.
    """
    preprocessor = cfg.get("model", {}).get("data_preprocessor") or cfg.get("data_preprocessor") or {}
    if not preprocessor.get("to_rgb", False):
        raise ConfigError("data_preprocessor.to_rgb is not True, so the model would get BGR images, "
                          "which DaViT checkpoints do not expect; set data_preprocessor.to_rgb=True")
    if "mean" not in preprocessor or "std" not in preprocessor:
        raise ConfigError("data_preprocessor needs the normalisation mean and std, e.g. "
                          "mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]")
    steps = cfg.get("test_dataloader", {}).get("dataset", {}).get("pipeline")
    if steps is None:
        raise ConfigError("the config has no test_dataloader.dataset.pipeline")
    types = [step.get("type") for step in steps]
    expected = ["LoadImageFromFile", "ResizeEdge", "CenterCrop", "PackInputs"]
    if types != expected:
        raise ConfigError(f"the test pipeline is {types}; this evaluator runs {expected} only")
    # mmpretrain's defaults first, so that an omitted option is checked as mmpretrain reads it
    resize = {"edge": "short", "backend": "cv2", "interpolation": "bilinear", **steps[1]}
    _check_step(resize, {"scale": None, "edge": "short", "backend": "pillow", "interpolation": None})
    _check_step(steps[2], {"crop_size": None})
    _check_step(steps[0], {})
    _check_step(steps[3], {})
    scale, crop_size = resize.get("scale"), steps[2].get("crop_size")
    if not isinstance(scale, int) or not isinstance(crop_size, int):
        raise ConfigError("ResizeEdge.scale and CenterCrop.crop_size must be integers")
    try:
        return build_test_transform(scale, crop_size, preprocessor["mean"], preprocessor["std"],
                                    resize["interpolation"])
    except ValueError as error:
        raise ConfigError(f"test pipeline: {error}") from None


def _check_step(step: dict, allowed: dict) -> None:
    """Refuse keys outside ``allowed`` and values that differ from the fixed ones (not None)."""
    for key, value in step.items():
        if key == "type":
            continue
        if key not in allowed:
            raise ConfigError(f"test pipeline step {step['type']}: option {key}={value!r} is not "
                              f"supported; remove it")
        if allowed[key] is not None and value != allowed[key]:
            raise ConfigError(f"test pipeline step {step['type']}: {key}={value!r} is not "
                              f"supported; use {key}={allowed[key]!r}")


def evaluator_spec(cfg: dict, num_classes: int) -> EvaluatorSpec:
    """The config's ``test_evaluator``: one mmpretrain ``Accuracy`` with ``topk`` and ``thrs``."""
    evaluator = cfg.get("test_evaluator", {"type": "Accuracy", "topk": (1, 5)})
    if isinstance(evaluator, (list, tuple)):
        if len(evaluator) != 1:
            raise ConfigError("test_evaluator lists several metrics; this evaluator computes one "
                              "Accuracy")
        evaluator = evaluator[0]
    if evaluator.get("type") != "Accuracy":
        raise ConfigError(f"test_evaluator type {evaluator.get('type')!r} is not supported; use "
                          "dict(type='Accuracy', topk=(1, 5))")
    unknown = sorted(set(evaluator) - {"type", "topk", "thrs"})
    if unknown:
        raise ConfigError(f"test_evaluator options {unknown} are not supported; remove them")
    topk = evaluator.get("topk", (1,))
    topk = (topk,) if isinstance(topk, int) else tuple(topk)
    if not topk or any(not isinstance(k, int) or not 1 <= k <= num_classes for k in topk):
        raise ConfigError(f"test_evaluator.topk {list(topk)} must hold integers between 1 and "
                          f"the model's {num_classes} classes")
    thrs = evaluator.get("thrs", 0.0)
    if isinstance(thrs, (list, tuple)):
        if len(thrs) != 1:
            raise ConfigError("test_evaluator.thrs with several thresholds is not supported; "
                              "give one number or None")
        thrs = thrs[0]
    return EvaluatorSpec(topk, None if thrs is None else float(thrs))


def checkpoint_source(text: str) -> str:
    """A model name's weights, or ``text`` itself (a path, URL or hf-hub: name)."""
    if text in MODELS:
        weights = MODELS[text].weights
        if weights is None:
            raise ValueError(f"{text!r} has no published weights; pass a checkpoint file or URL, "
                             "or a name from davit list --pretrained")
        return weights
    if re.match(r"^(https?://|hf-hub:)", text) or Path(text).expanduser().is_file():
        return text
    raise FileNotFoundError(f"checkpoint {text!r} is neither a file, an http(s) URL, an hf-hub: "
                            "name nor a model name (davit list --pretrained)")


def select_device(requested: str | None) -> torch.device:
    """This process's device: ``requested`` or cuda when available, under torchrun the local GPU."""
    device = torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available on this machine; use --device cpu")
        if distributed.env_world_size() > 1:
            if device.index is not None:
                raise ValueError("under torchrun pass --device cuda: each process uses the GPU "
                                 "numbered by its LOCAL_RANK")
            device = torch.device("cuda", distributed.env_local_rank())
    return device


def predict(model: DaViTClassifier, loader: DataLoader, device: torch.device,
            amp: torch.dtype | None, k: int, strict: bool, progress: bool) -> list[dict]:
    """Per-image records for the images ``loader`` yields: the label, the top-1 prediction and the
    ``k`` best labels and scores, or the error of an image that could not be read."""
    records = []
    bar = tqdm(total=len(loader.sampler), unit="img", desc="test", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    with bar, torch.inference_mode():
        for batch in loader:
            for index, label, error in batch.failures:
                if strict:
                    raise ImageLoadError(f"{error} (--strict stops at the first unreadable image)")
                bar.write(f"warning: skipped an unreadable image: {error}", file=sys.stderr)
                records.append({"index": index, "gt_label": label, "error": error})
            if batch.images is not None:
                images = batch.images.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    logits = model(images)
                scores = logits.float().softmax(dim=1)
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


def accuracy(records: list[dict], evaluator: EvaluatorSpec) -> dict[str, float]:
    """mmpretrain's Accuracy over the evaluated images (at least one): a top-k hit needs the true
    label among the k best and, with a threshold, a score above it."""
    done = [r for r in records if "error" not in r]
    metrics = {}
    for k in evaluator.topk:
        hits = sum(_hit(r, k, evaluator.thr) for r in done)
        metrics[f"accuracy/top{k}"] = 100.0 * hits / len(done)
    return metrics


def _hit(record: dict, k: int, thr: float | None) -> bool:
    pairs = zip(record["topk_labels"][:k], record["topk_scores"][:k])
    return any(label == record["gt_label"] and (thr is None or score > thr) for label, score in pairs)


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
            row[f"top{k}"] += _hit(record, k, evaluator.thr)
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


def save_confusion_matrix(records: list[dict], true_names: list[str] | None,
                          pred_names: list[str] | None, path: Path,
                          max_classes: int = CONFUSION_CLASSES) -> None:
    """Plot true against predicted labels. With more than ``max_classes`` classes involved, only
    the ``max_classes`` most confused (most wrong predictions to or from them) are shown."""
    import numpy as np
    from matplotlib.figure import Figure

    pairs = Counter((r["gt_label"], r["pred_label"]) for r in records if "error" not in r)
    labels = sorted({label for pair in pairs for label in pair})
    title = f"confusion matrix, {sum(pairs.values())} images"
    if len(labels) > max_classes:
        confused = Counter()
        for (true, pred), count in pairs.items():
            if true != pred:
                confused[true] += count
                confused[pred] += count
        ranked = [label for label, _ in sorted(confused.items(), key=lambda kv: (-kv[1], kv[0]))]
        ranked += [label for label in labels if label not in confused]
        title += f" ({max_classes} most-confused of {len(labels)} classes)"
        labels = sorted(ranked[:max_classes])
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
    ax.set_title(title)
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


def main(argv: Sequence[str] | None = None, prog: str = "tools/test.py") -> int:
    """Run the evaluation; 0 on success, 1 with a one-line message on bad input."""
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as error:
        rank = f"[rank {distributed.get_rank()}] " if distributed.get_world_size() > 1 else ""
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{rank}{prog}: error: {message}", file=sys.stderr)
        return 1
    finally:
        distributed.cleanup()


def _run(args: argparse.Namespace) -> int:
    if args.out and not args.out.endswith(".json"):
        raise ValueError(f"--out {args.out}: only .json output is supported")
    if args.launcher == "pytorch" and "WORLD_SIZE" not in os.environ:
        raise ValueError("--launcher pytorch needs torchrun: torchrun --nproc_per_node N "
                         "tools/test.py ...")
    cfg = load_config(args.config, args.cfg_options)
    spec = model_spec(cfg.get("model") or {}, args.semantics)
    evaluator = evaluator_spec(cfg, spec.num_classes)
    transform = transform_from_config(cfg)
    loader_cfg = cfg.get("test_dataloader") or {}
    dataset = build_dataset(loader_cfg.get("dataset") or {}, transform, spec.num_classes)
    source = checkpoint_source(args.checkpoint)
    amp = AMP_DTYPES[args.amp] if args.amp else None
    device = select_device(args.device)

    distributed.init_distributed(device)
    rank, world = distributed.get_rank(), distributed.get_world_size()
    main_process = rank == 0
    model = build_model(spec)
    with distributed.main_process_first():
        state_dict = read_checkpoint(source, progress=main_process)
    load_into(model, state_dict)
    model.to(device).eval()

    length = min(len(dataset), args.limit or len(dataset))
    if main_process:
        print(f"evaluating {args.checkpoint} (embed_dims={list(spec.arch.embed_dims)}, "
              f"depths={list(spec.arch.depths)}, semantics={spec.semantics}) on {length} images "
              f"from {dataset.source}, {world} process(es) on {device.type}", file=sys.stderr)

    batch_size = args.batch_size or loader_cfg.get("batch_size", 1)
    workers = args.num_workers if args.num_workers is not None else loader_cfg.get("num_workers", 0)
    sampler = distributed.ShardSampler(length, rank, world)
    workers = min(workers, math.ceil(len(sampler) / batch_size))  # no idle workers
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                        num_workers=workers, collate_fn=collate_samples,
                        pin_memory=device.type == "cuda")
    k = min(max(max(evaluator.topk), 5), spec.num_classes)
    started = time.perf_counter()
    records = predict(model, loader, device, amp, k, args.strict, progress=main_process)
    gathered = distributed.gather_objects(records)
    if not main_process:
        return 0
    records = sorted((r for part in gathered for r in part), key=lambda r: r["index"])
    if [r["index"] for r in records] != list(range(length)):
        raise RuntimeError("the processes did not return one prediction per image; this is a bug")
    for record in records:
        record["path"] = str(dataset.samples[record["index"]][0])
    if all("error" in r for r in records):
        raise ImageLoadError(f"none of the {length} images could be read; the first error: "
                             f"{records[0]['error']}")
    seconds = time.perf_counter() - started

    _report(args, cfg, spec, evaluator, dataset, records, seconds, world, device)
    return 0


def _report(args: argparse.Namespace, cfg: dict, spec: ModelSpec, evaluator: EvaluatorSpec,
            dataset: LabelledImageDataset, records: list[dict], seconds: float, world: int,
            device: torch.device) -> None:
    """Print the metrics and save the work-dir files and the optional outputs (rank 0)."""
    failed = [{"path": r["path"], "error": r["error"]} for r in records if "error" in r]
    metrics = accuracy(records, evaluator)
    evaluated = len(records) - len(failed)
    class_names = dataset.classes
    model_names = _model_class_names(class_names, spec.num_classes)
    for record in records:
        if "error" not in record and model_names is not None:
            record["pred_class"] = model_names[record["pred_label"]]

    print("  ".join(f"{key}: {value:.4f}" for key, value in metrics.items()))
    print(f"evaluated {evaluated} images, failed {len(failed)} ({seconds:.1f} s, "
          f"{evaluated / max(seconds, 1e-9):.1f} images/s)")
    if failed:
        print(f"the metrics leave out {len(failed)} unreadable image(s):", file=sys.stderr)
        for item in failed:
            print(f"  {item['error']}", file=sys.stderr)

    work_dir = Path(args.work_dir) if args.work_dir else \
        Path("work_dirs") / Path(args.config).stem / time.strftime("%Y%m%d_%H%M%S")
    work_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, work_dir / Path(args.config).name)
    summary = {**metrics, "evaluated": evaluated, "failed": len(failed), "failed_images": failed,
               "config": args.config, "checkpoint": args.checkpoint, "semantics": spec.semantics,
               "processes": world, "device": device.type, "seconds": round(seconds, 3)}
    (work_dir / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    write_per_class_csv(records, class_names, evaluator, work_dir / "per_class_accuracy.csv")
    saved = [work_dir / "metrics.json", work_dir / "per_class_accuracy.csv"]
    plots = ([Path(args.show_dir)] if args.show_dir else []) + ([work_dir] if args.confusion_matrix else [])
    for folder in plots:
        save_confusion_matrix(records, class_names, model_names, folder / "confusion_matrix.png")
        saved.append(folder / "confusion_matrix.png")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = summary if args.out_item == "metrics" else [_public(r) for r in records]
        out.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        saved.append(out)
    print("saved " + ", ".join(str(p) for p in saved), file=sys.stderr)


def _model_class_names(dataset_classes: list[str] | None, num_classes: int) -> list[str] | None:
    """Names of the model's outputs: the dataset's when it has one per output, else ImageNet's
    for a 1000-class model."""
    if dataset_classes is not None and len(dataset_classes) == num_classes:
        return dataset_classes
    return imagenet_classes() if num_classes == 1000 else None


def _public(record: dict) -> dict[str, Any]:
    """A record for --out, path first."""
    return {"path": record["path"], **{k: v for k, v in record.items() if k != "path"}}
