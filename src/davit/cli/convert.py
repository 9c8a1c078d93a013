"""``davit convert``: rewrite a checkpoint in another format's key names, its model card kept."""
from __future__ import annotations

import argparse

from ..checkpoint.convert import convert_file
from ..checkpoint.formats import FORMATS


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("convert", help="convert a checkpoint between formats")
    parser.add_argument("src", help="checkpoint path, URL, save_pretrained folder, hf-hub: name or "
                                    "model name with published weights (davit list --pretrained)")
    parser.add_argument("dst", help="output .pth or .safetensors")
    parser.add_argument("--to", required=True, choices=FORMATS, help="the key layout to write")
    parser.add_argument("--from", dest="source_format", choices=FORMATS, help="default: detected")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    out = convert_file(args.src, args.dst, to=args.to, source_format=args.source_format)
    print(f"wrote {out}")
    return 0
