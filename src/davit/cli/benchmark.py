"""``davit benchmark``: time this library's DaViT against timm's or transformers' (see
:mod:`davit.benchmark`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..benchmark import DTYPES, MODES, REFERENCES, BenchmarkOptions, format_report
from ..benchmark import run as run_benchmark
from .argtypes import add_input_size, non_negative_int, positive_int


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "benchmark", help="time this library's DaViT against timm's (or transformers')",
        description="Time this library's DaViT against timm's DaViT (and, for Florence-2 towers, "
                    "transformers' Florence2VisionBackbone) with the same weights and inputs, "
                    "alternately in one process.")
    parser.add_argument("--model", default="tiny",
                        help="zoo name (davit-florence2-base: its tower), architecture name (tiny "
                             "... giant, florence2-base) or a JSON dict with embed_dims, depths, "
                             "num_heads (default: tiny)")
    parser.add_argument("--batch-size", type=positive_int, default=16,
                        help="images per step (default: 16)")
    add_input_size(parser)
    parser.add_argument("--dtype", choices=DTYPES, default="fp32",
                        help="fp32; bf16 (fp32 weights, bfloat16 autocast); pure-bf16 (bfloat16 "
                             "weights and inputs)")
    parser.add_argument("--mode", choices=MODES, default="inference",
                        help="inference (forward without autograd) or train (forward, backward "
                             "and an AdamW step)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--threads", type=positive_int, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed steps per model")
    parser.add_argument("--warmup", type=non_negative_int, default=2,
                        help="untimed steps per model first")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:1 (default: cuda if available, else cpu)")
    parser.add_argument("--reference", choices=REFERENCES, default="timm",
                        help="what to time against: timm's DaViT (default); transformers' "
                             "Florence2VisionBackbone with eager and sdpa attention (Florence-2 "
                             "models only); all of them")
    parser.add_argument("--no-timm", action="store_true",
                        help="time this library's model only, no reference (timm and "
                             "transformers need not be installed)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    options = BenchmarkOptions(
        model=args.model, batch_size=args.batch_size, input_size=tuple(args.input_size),
        dtype=args.dtype, mode=args.mode, compile=args.compile, threads=args.threads,
        repeats=args.repeats, warmup=args.warmup, device=args.device, timm=not args.no_timm,
        reference=args.reference)
    report = run_benchmark(options)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
