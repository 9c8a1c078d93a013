"""Train a DaViT Mask R-CNN (or Faster R-CNN) on a COCO-format dataset and evaluate its bbox and
segm mAP with pycocotools:

    python tools/train_detection.py TRAIN_IMAGES TRAIN_JSON VAL_IMAGES VAL_JSON --work-dir DIR
        [--arch tiny | --arch '{"embed_dims": [32, 64, 128, 256], ...}'] [--epochs 12] ...

Writes ``metrics.jsonl`` (one line per epoch), ``final.pth`` and ``predictions.png`` under the work
directory and prints the last evaluation as a JSON line. Images whose file is missing and
annotations with an invalid box are skipped with a warning that counts them.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from davit.dense.train import DetectionOptions, train_detection
from davit.errors import DavitError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/train_detection.py", description=__doc__.split("\n\n")[0])
    for name, what in (("train_images", "folder of training images"),
                       ("train_annotations", "COCO instances JSON of the training images"),
                       ("val_images", "folder of validation images"),
                       ("val_annotations", "COCO instances JSON of the validation images")):
        parser.add_argument(name, type=Path, help=what)
    parser.add_argument("--work-dir", type=Path, required=True, help="where outputs go")
    parser.add_argument("--arch", default="tiny", help="architecture name or a JSON dict of its fields")
    parser.add_argument("--detector", choices=("maskrcnn", "fasterrcnn"), default="maskrcnn",
                        help="torchvision detector on DaViT + FPN (default maskrcnn)")
    parser.add_argument("--epochs", type=int, default=12, help="passes over the training set (default 12)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per step (default 4)")
    parser.add_argument("--lr", type=float, default=3e-4, help="AdamW's peak learning rate")
    parser.add_argument("--image-size", type=int, default=128, help="the detector's min and max size")
    parser.add_argument("--mask-head", type=int, nargs="+", default=[256] * 4,
                        help="widths of the mask head's convolutions")
    parser.add_argument("--fpn-channels", type=int, default=256, help="the FPN's width")
    parser.add_argument("--anchor-sizes", type=int, nargs=5, default=None, metavar="SIZE",
                        help="one anchor size per FPN level P2-P6 (default torchvision's 32 64 128 256 512)")
    parser.add_argument("--backbone-weights", default=None,
                        help="a checkpoint to start the backbone from (a classifier's, say; default random)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_options(argv: Sequence[str] | None = None) -> DetectionOptions:
    args = build_parser().parse_args(argv)
    arch = json.loads(args.arch) if args.arch.lstrip().startswith("{") else args.arch
    return DetectionOptions(args.train_images, args.train_annotations, args.val_images, args.val_annotations,
                            args.work_dir, arch=arch, detector=args.detector, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, image_size=args.image_size,
                            mask_head=tuple(args.mask_head), fpn_channels=args.fpn_channels,
                            anchor_sizes=tuple(args.anchor_sizes) if args.anchor_sizes else None,
                            backbone_weights=args.backbone_weights, seed=args.seed, progress=not args.no_progress)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        result = train_detection(parse_options(argv))
    except DavitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
