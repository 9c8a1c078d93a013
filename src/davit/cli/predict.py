"""``davit predict``: classify image files; an unreadable file is reported and the rest still
classified (exit status 1 when any file failed)."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Iterator, Sequence

import torch

from ..api import get_model, inference_model
from .app import print_error
from .argtypes import add_checkpoint, add_semantics, positive_int


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("predict", help="classify images")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", default="davit-tiny_3rdparty_in1k", help="model name (davit list)")
    add_checkpoint(parser)
    parser.add_argument("--topk", type=positive_int, default=5)
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1")
    add_semantics(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    pretrained = args.checkpoint if args.checkpoint else True
    model = get_model(args.model, pretrained=pretrained, device=args.device,
                      semantics=args.semantics)
    with _errors_not_logged():  # each failed image is printed once, below
        results = inference_model(model, list(args.images), batch_size=args.batch_size)
    records, failed = [], 0
    for path, result in zip(args.images, results):
        if "error" in result:
            failed += 1
            print_error(args.prog, result["error"])
            records.append({"image": path, "error": result["error"]})
            continue
        predictions = _top(result["pred_scores"], args.topk, model.class_names)
        records.append({"image": path, "predictions": predictions})
        if not args.json:
            print(path)
            for p in predictions:
                print(f"  {p['score']:.4f}  {p['label']:4d}  {p.get('class', '')}")
    if args.json:
        print(json.dumps(records, indent=2))
    return 1 if failed else 0


def _top(probabilities: Sequence[float], k: int, names: Sequence[str] | None) -> list[dict]:
    """The ``k`` most probable classes: label, score and, when known, class name."""
    scores = torch.as_tensor(probabilities)
    top = scores.topk(min(k, scores.numel()))
    return [{"label": int(i), "score": float(s), **({"class": names[int(i)]} if names else {})}
            for s, i in zip(top.values, top.indices)]


class _BelowError(logging.Filter):
    """Passes records below ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


@contextlib.contextmanager
def _errors_not_logged() -> Iterator[None]:
    """Hold back the library's error log lines, which this command prints in its own format."""
    logger, quiet = logging.getLogger("davit"), _BelowError()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
