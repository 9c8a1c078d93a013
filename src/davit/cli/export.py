"""``davit export``: write a classifier or Florence-2 encoder as ONNX, checked against PyTorch with
onnxruntime."""
from __future__ import annotations

import argparse

from ..api import get_model
from ..export import export_onnx
from .argtypes import add_checkpoint, add_input_size, add_semantics, positive_int


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("export", help="export a model to ONNX (checked with onnxruntime)")
    parser.add_argument("model", help="model or architecture name, config file, checkpoint file or "
                                      "URL, save_pretrained folder or hf-hub: name")
    parser.add_argument("output", help="output .onnx file")
    add_checkpoint(parser)
    parser.add_argument("--random-weights", action="store_true", help="export without weights")
    parser.add_argument("--num-classes", type=positive_int, help="default: the checkpoint's")
    add_input_size(parser)
    add_semantics(parser)
    parser.add_argument("--dynamic-size", action="store_true",
                        help="dynamic height and width as well as batch size (--input-size is then "
                             "the first size checked); Florence-2 towers take any side from 32")
    parser.add_argument("--encode-image", action="store_true",
                        help="export a Florence-2 encoder's encode_image (projected image tokens, "
                             "output 'image_tokens') instead of model(x) (the tower's last-stage "
                             "map, output 'features')")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    pretrained = args.checkpoint if args.checkpoint else not args.random_weights
    model = get_model(args.model, pretrained=pretrained, semantics=args.semantics,
                      num_classes=args.num_classes)
    out = export_onnx(model, args.output, tuple(args.input_size), verify=not args.no_verify,
                      quiet=not getattr(args, "verbose", False), dynamic_size=args.dynamic_size,
                      encode_image=args.encode_image)
    print(f"wrote {out}")
    return 0
