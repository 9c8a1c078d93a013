"""``davit predict``: classify image files, folders and patterns (:mod:`davit.engine.infer`).

Results stream to the terminal or, with ``--out``, to a JSON-lines or CSV file. An unreadable
file is reported once, in its place, and the rest still classified (exit status 1 when any
failed); Ctrl-C keeps the finished results (exit status 130) and ``--resume`` carries on.
"""
from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from ..data.datasets import IMAGE_EXTENSIONS
from ..dtypes import DTYPES
from ..engine import distributed
from ..engine.infer import DEFAULT_MODEL, InferenceInterrupted, InferenceOptions, InferenceSummary, infer
from ..engine.ray import predict_on_ray
from ..errors import InvalidArgumentError
from ..records import error_message
from .app import print_error
from .argtypes import (
    add_device,
    add_engine,
    add_int8,
    add_model_and_checkpoint,
    add_random_weights,
    add_semantics,
    non_negative_int,
    positive_int,
    weights_seed,
)

DESCRIPTION = """Classify images. Results are printed (or written with --out) as each batch is
done; torchrun --nproc_per_node N -m davit predict ... shares the images among N processes and
still writes one output in input order."""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("predict", help="classify images", description=DESCRIPTION)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (searched recursively) or quoted patterns "
                             "such as 'photos/**/*.jpg'")
    add_model_and_checkpoint(parser, DEFAULT_MODEL)
    add_random_weights(parser, "the classes are then meaningless, but every step runs")
    parser.add_argument("--topk", type=positive_int, default=5,
                        help="how many of the best classes to report per image (default: 5)")
    parser.add_argument("--batch-size", type=positive_int, default=16,
                        help="images per batch and process (default: 16)")
    parser.add_argument("--num-workers", type=non_negative_int, default=2,
                        help="image decoding processes per process; 0 decodes in the main one "
                             "(default: 2)")
    parser.add_argument("--out", metavar="FILE", help="write one result per image to this .jsonl or .csv file, "
                                      "as they are computed, instead of printing them")
    parser.add_argument("--json", action="store_true",
                        help="print the results as one JSON array of prediction records (without --out)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32",
                        help="fp32, or run the model under autocast in bf16 or fp16 (fp16 needs "
                             "CUDA) (default: fp32)")
    add_device(parser)
    parser.add_argument("--backend", choices=("torch", "onnxruntime", "openvino"), default="torch",
                        help="run the model in PyTorch (default) or exported, on the CPU, to ONNX Runtime "
                             "(fp32) or OpenVINO (fp32 or bf16 by --dtype); same top-1, see "
                             "benchmarks/LOG.md for which is fastest")
    add_int8(parser, "torchao PT2E compiled by inductor for --batch-size on --backend torch, NNCF on openvino",
             "classify with")
    add_semantics(parser, help="official (the paper's model) or mmpretrain (its port's numerics) "
                               "(default: the weights' card's, else official)")
    parser.set_defaults(semantics=None)  # None: as the weights' card says
    add_engine(parser)
    parser.add_argument("--show-dir", metavar="DIR",
                        help="also save each image with its top-k classes and scores drawn on it in DIR, "
                             "as <file stem>.png")
    parser.add_argument("--resume", action="store_true",
                        help="skip the images the --out file already holds results for and append the "
                             "rest; images whose earlier line is an error are classified again "
                             "(their error lines are removed first, one line per image)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.json and args.out:
        raise InvalidArgumentError("--json prints the results; --out writes them in the format "
                                   "its suffix names (.jsonl or .csv); pass one of the two")
    options = InferenceOptions(
        inputs=tuple(args.inputs), model=args.model, checkpoint=args.checkpoint,
        random_weights=args.random_weights, topk=args.topk,
        batch_size=args.batch_size, num_workers=args.num_workers, out=args.out, dtype=args.dtype,
        device=args.device, semantics=args.semantics, resume=args.resume, show_dir=args.show_dir,
        backend=args.backend, int8=args.int8, calibration=args.calibration, holdout=args.holdout,
        min_agreement=args.min_agreement, allow_slower_int8=args.allow_slower_int8)
    if args.int8 and args.engine == "ray":
        raise InvalidArgumentError("--int8 runs with --engine local (each Ray worker would calibrate and compile "
                                   "its own int8 model)")
    try:
        if args.engine == "ray":
            summary = predict_on_ray(options, _Printer(args.prog, args.json), args.seed, args.ray_address,
                                     args.concurrency, args.num_gpus)
        else:
            with weights_seed(args.seed):  # the same random weights in every process of a torchrun
                summary = infer(options, _Printer(args.prog, args.json))
        if summary.not_images and distributed.is_main_process():
            print(f"{args.prog}: passed over {summary.not_images} file(s) of the input folders and patterns "
                  f"that are not images ({'/'.join(IMAGE_EXTENSIONS)})", file=sys.stderr)
        if args.out and distributed.is_main_process():
            print(f"{args.prog}: {describe(summary)}; the results are in {args.out}",
                  file=sys.stderr)
        return 1 if summary.failed else 0
    except InferenceInterrupted as stop:
        if distributed.is_main_process():
            print(f"{args.prog}: {stop}", file=sys.stderr)
        return 130
    finally:
        distributed.cleanup()


def describe(summary: InferenceSummary) -> str:
    """The run's counts: classified (a prediction written), failed (an error record written)
    and skipped as done by an earlier run (``--resume``)."""
    failed = f"{summary.failed} failed (unreadable; see the error records)" if summary.failed \
        else "0 failed"
    skipped = f", {summary.skipped} done before" if summary.skipped else ""
    return f"{summary.classified} image(s) classified, {failed}{skipped}"


class _Printer:
    """Results on stdout as they come, in today's layout (or one JSON array at the end), and each
    failure as one error line on stderr; written around the progress bar."""

    def __init__(self, prog: str, as_json: bool) -> None:
        self.prog = prog
        self.as_json = as_json
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        with tqdm.external_write_mode(file=sys.stderr):
            if "error" in record:
                print_error(self.prog, error_message(record))
            if self.as_json:
                self.records.append(record)
            elif "error" not in record:
                print(record["image"])
                for top in record["topk"]:
                    print(f"  {top['score']:.4f}  {top['label']:4d}  {top.get('class', '')}")

    def close(self) -> None:
        if self.as_json:
            print(json.dumps(self.records, indent=2))
