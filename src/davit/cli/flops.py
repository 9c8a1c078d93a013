"""``davit flops``: parameters and multiply-adds, counted on the meta device (no memory, no time)."""
from __future__ import annotations

import argparse
import json

import torch

from ..checkpoint.resolve import resolve_model
from ..flops import count_flops
from ..model import build_model
from .argtypes import add_input_size, add_semantics


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("flops", help="count parameters and multiply-adds")
    parser.add_argument("model", help="model or architecture name, or a JSON architecture")
    add_input_size(parser)
    add_semantics(parser, help="official (default) or mmpretrain, whose final LayerNorm acts on "
                               "every token before pooling: then the count equals the seed's "
                               "table exactly")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    ref = resolve_model(args.model)
    with torch.device("meta"):
        model = build_model(ref.arch, num_classes=ref.num_classes, semantics=args.semantics)
    result = {"model": args.model, **count_flops(model, tuple(args.input_size))}
    if args.json:
        print(json.dumps(result))
        return 0
    height, width = args.input_size
    print(f"model       {args.model}\ninput size  {height}x{width}\n"
          f"params      {result['params']:,} ({result['params'] / 1e6:.2f} M)\n"
          f"flops       {result['flops']:,} ({result['flops'] / 1e9:.2f} G multiply-adds, "
          f"feature extractor as in mmpretrain's table)\n"
          f"head flops  {result['head_flops']:,}")
    return 0
