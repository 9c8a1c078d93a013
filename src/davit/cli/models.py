"""``davit list``: the names of the model zoo."""
from __future__ import annotations

import argparse

from ..zoo import MODELS, list_models


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("list", help="list model names")
    parser.add_argument("pattern", nargs="?", help="glob or substring, e.g. '*tiny*'")
    parser.add_argument("--pretrained", action="store_true",
                        help="only models with published weights")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    for name in list_models(args.pattern, pretrained=args.pretrained):
        info = MODELS[name]
        print(f"{name:28s} arch={info.arch:6s} weights={info.weights or '-'}")
    return 0
