"""``davit serve``: an HTTP inference server for a model (:mod:`davit.serve`)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import InvalidArgumentError, require
from ..runtime import BACKENDS, RUNTIME_DTYPES
from .argtypes import add_checkpoint, add_int8, add_random_weights, check_int8_args, port, positive_int, weights_seed

TOKEN_VARIABLE = "DAVIT_SERVE_TOKEN"

DESCRIPTION = f"""Serve a model over HTTP: POST /v1/predict and /v1/embed (images as multipart
'images' uploads or JSON {{"images": [base64, ...]}}), GET /v1/models, /health, /metrics and the
OpenAPI schema (/docs). Concurrent requests are batched. With --token-file (or {TOKEN_VARIABLE})
every endpoint but /health needs 'Authorization: Bearer TOKEN'; an empty or blank token is refused,
never taken as "no token". Stop with Ctrl-C: accepted requests are answered first."""


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or a positive number, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("serve", help="serve a model over HTTP (FastAPI + uvicorn)",
                                   description=DESCRIPTION)
    parser.add_argument("model", metavar="MODEL_OR_PATH",
                        help="zoo name, architecture name or JSON, checkpoint file, save_pretrained folder "
                             "or hf-hub: name")
    add_checkpoint(parser)
    add_random_weights(parser, "for trying the server out")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, "
                                                            "this machine only)")
    parser.add_argument("--port", type=port, default=8000, help="port (default: 8000)")
    parser.add_argument("--max-batch-size", type=positive_int, default=16,
                        help="most images per model run (default: 16)")
    parser.add_argument("--max-wait-ms", type=non_negative_float, default=5.0,
                        help="longest an image waits for others to fill its batch (default: 5)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="runtime of the classifier (default: torch); embeddings run on torch")
    parser.add_argument("--dtype", choices=RUNTIME_DTYPES, default="fp32", help="compute precision (default: fp32)")
    parser.add_argument("--threads", type=positive_int, help="runtime threads (default: one per core)")
    add_int8(parser, "torchao PT2E compiled for 1 and --max-batch-size images on --backend torch, NNCF on openvino",
             "serve")
    parser.add_argument("--compile", action="store_true",
                        help="with --backend torch: serve inductor's graph of the model with frozen weights, "
                             "compiled at start-up for 1 and --max-batch-size images (about a minute; then "
                             "the lowest latency on CPUs with AMX, see benchmarks/LOG.md)")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token-file", metavar="FILE",
                       help=f"file holding the bearer token required on every endpoint but /health (default: "
                            f"${TOKEN_VARIABLE}; neither: no token)")
    token.add_argument("--token", help="the bearer token itself (shows in ps: prefer --token-file or "
                                       f"${TOKEN_VARIABLE})")
    parser.add_argument("--max-body-mb", type=positive_float, default=20.0,
                        help="largest request body in MiB (default: 20)")
    parser.add_argument("--max-pixels", type=positive_int, default=40_000_000,
                        help="most pixels per image, from its header (default: 40000000)")
    parser.add_argument("--max-images", type=positive_int, default=32, help="most images per request (default: 32)")
    parser.add_argument("--timeout", type=positive_float, default=30.0,
                        help="seconds a request may take before it is answered 503 (default: 30)")
    parser.add_argument("--top-k", type=positive_int, default=5, help="default top-k list length (default: 5)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    require("fastapi", "serve", "davit serve")
    from ..serve.app import ServeSettings, model_thread
    from ..serve.limits import Limits, MiB
    from ..serve.model import Int8Serving, ServedModel, load_served_model
    from ..serve.server import run_server

    limits = Limits(max_body_bytes=int(args.max_body_mb * MiB), max_pixels=args.max_pixels,
                    max_images=args.max_images, timeout_s=args.timeout)
    settings = ServeSettings(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, limits=limits,
                             token=bearer_token(args), top_k=args.top_k)
    check_int8_args(args)
    int8 = Int8Serving(args.calibration, args.holdout, args.min_agreement, args.allow_slower_int8) \
        if args.int8 else None
    def load() -> ServedModel:
        with weights_seed(args.seed):
            return load_served_model(args.model, checkpoint=args.checkpoint, random_weights=args.random_weights,
                                     backend=args.backend, dtype=args.dtype, threads=args.threads, int8=int8,
                                     max_batch_size=args.max_batch_size, compiled=args.compile)

    executor = model_thread()  # every PyTorch operator of the server runs on this one thread
    try:
        served = executor.submit(load).result()
    except BaseException:
        executor.shutdown(wait=False)
        raise
    run_server(served, settings, args.host, args.port, executor=executor)
    return 0


def bearer_token(args: argparse.Namespace) -> str | None:
    """The token from ``--token``, ``--token-file`` or the environment (in that order), or None
    when none is given; refuses one that is given but empty or blank (``--token "$(cat missing)"``
    must not start an open server)."""
    if args.token_file is not None:
        try:
            text = Path(args.token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InvalidArgumentError(f"--token-file {args.token_file}: cannot read it ({error}); give a "
                                       "readable file holding the token") from None
        where, token = f"--token-file {args.token_file}", text.strip()
    elif args.token is not None:
        where, token = "--token", args.token
    elif TOKEN_VARIABLE in os.environ:
        where, token = TOKEN_VARIABLE, os.environ[TOKEN_VARIABLE]
    else:
        return None
    if not token.strip():
        raise InvalidArgumentError(f"{where} gives an empty bearer token; give a non-empty token, or none "
                                   "of --token, --token-file and the variable to serve without one")
    return token
