"""``davit benchmark``: time this library's DaViT against timm's or transformers', and the same
weights on ONNX Runtime and OpenVINO (see :mod:`davit.benchmark`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..benchmark import DTYPES, MODES, REFERENCES, BenchmarkOptions, format_report
from ..benchmark import run as run_benchmark
from ..runtime import BACKENDS
from .argtypes import add_input_size, non_negative_int, positive_int


def backend_names(text: str) -> list[str]:
    """``torch,openvino``: one or more runtimes, comma-separated."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"runtimes are {', '.join(BACKENDS)}, got {text!r}")
    return names


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "benchmark", help="time this library's DaViT against timm's (or transformers'), and on "
                          "ONNX Runtime and OpenVINO",
        description="Time this library's DaViT against timm's DaViT (and, for Florence-2 towers, "
                    "transformers' Florence2VisionBackbone), and the same weights on ONNX Runtime and "
                    "OpenVINO (--backend, --int8), with the same inputs, in turns in one process.")
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
    parser.add_argument("--backend", type=backend_names, action="extend", metavar="RUNTIME[,RUNTIME]",
                        help=f"runtimes to time the same weights on, side by side: {', '.join(BACKENDS)}; "
                             "repeat or separate with commas (default: torch; the references run with "
                             "torch)")
    parser.add_argument("--int8", action="store_true",
                        help="also time the int8 model of each backend (torch: torchao PT2E compiled by "
                             "inductor; onnxruntime, openvino), quantised "
                             "after training on the calibration images")
    parser.add_argument("--calibration", metavar="FOLDER",
                        help="with --int8: calibrate on these images, resized to --input-size "
                             "(default: random images)")
    parser.add_argument("--calibration-images", type=positive_int, default=32,
                        help="with --int8: at most this many calibration images (default: 32)")
    parser.add_argument("--block", type=positive_int, default=5,
                        help="with runtimes: timed steps in a row per model before the next one's "
                             "(default: 5)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="the models are timed with random weights (offline: nothing is downloaded) "
                             "drawn from this seed (default: 0)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    options = BenchmarkOptions(
        model=args.model, batch_size=args.batch_size, input_size=tuple(args.input_size),
        dtype=args.dtype, mode=args.mode, compile=args.compile, threads=args.threads,
        repeats=args.repeats, warmup=args.warmup, device=args.device, timm=not args.no_timm,
        reference=args.reference, backends=tuple(dict.fromkeys(args.backend or ["torch"])),
        int8=args.int8, calibration=args.calibration, calibration_images=args.calibration_images,
        block=args.block, seed=args.seed)
    report = run_benchmark(options)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
