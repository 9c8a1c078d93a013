"""``davit test`` (and ``tools/test.py``): evaluate a checkpoint on a dataset, with mmpretrain's
``tools/test.py`` options."""
from __future__ import annotations

import argparse

from ..dtypes import AMP_DTYPES
from ..engine import distributed
from ..engine.evaluate import EvaluationOptions, evaluate
from ..model import SEMANTICS
from .argtypes import add_config_options, add_device, non_negative_int, positive_int

DESCRIPTION = "Evaluate a DaViT checkpoint on a dataset (mmpretrain's tools/test.py)."


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("test", help="evaluate a checkpoint on a dataset from a config",
                                   description=DESCRIPTION)
    add_config_options(parser, "test_dataloader", "where to save the config, metrics and per-class "
                                                  "accuracy (default: work_dirs/<config name>/<time>)")
    parser.add_argument("checkpoint", help="checkpoint path, http(s) URL, hf-hub: name or model "
                                           "name (davit list --pretrained)")
    parser.add_argument("--out", help="also write a JSON file with the metrics or the predictions")
    parser.add_argument("--out-item", choices=["metrics", "pred"], default="pred",
                        help="what --out holds: per-image predictions (default, as mmpretrain) "
                             "or the metrics")
    add_device(parser)
    parser.add_argument("--batch-size", type=positive_int,
                        help="images per batch and process (default: test_dataloader.batch_size)")
    parser.add_argument("--num-workers", type=non_negative_int,
                        help="data loading processes (default: test_dataloader.num_workers)")
    parser.add_argument("--amp", nargs="?", const="fp16", choices=sorted(AMP_DTYPES),
                        help="run the model under autocast in this precision (bare --amp: fp16)")
    parser.add_argument("--semantics", choices=SEMANTICS,
                        help="override the config's model.semantics")
    parser.add_argument("--show-dir", help="save each image with its top-k classes, scores and true class "
                                           "drawn, and a confusion-matrix PNG, in this folder")
    parser.add_argument("--confusion-matrix", action="store_true",
                        help="save a confusion-matrix PNG in the work dir")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first image that cannot be read (default: count it "
                             "as failed and go on)")
    parser.add_argument("--limit", type=positive_int, metavar="N",
                        help="evaluate only N images, drawn evenly from every class (an evenly "
                             "strided share of each class's images, the same ones every run), "
                             "not the first N files; a log line says how many of how many "
                             "classes")
    parser.add_argument("--launcher", choices=["none", "pytorch"],
                        help="accepted for mmpretrain compatibility; torchrun's environment "
                             "decides, and 'pytorch' requires it")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    options = EvaluationOptions(
        config=args.config, checkpoint=args.checkpoint, cfg_options=tuple(args.cfg_options),
        work_dir=args.work_dir, out=args.out, out_item=args.out_item, device=args.device,
        batch_size=args.batch_size, num_workers=args.num_workers, amp=args.amp,
        semantics=args.semantics, show_dir=args.show_dir, confusion_matrix=args.confusion_matrix,
        strict=args.strict, limit=args.limit, launcher=args.launcher)
    try:
        evaluate(options)
    finally:
        distributed.cleanup()
    return 0
