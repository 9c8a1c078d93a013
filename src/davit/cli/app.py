"""The ``davit`` entry point: builds the subcommand parsers and turns library errors into messages.

Each subcommand is a module of this package with ``register(subparsers)``, which adds its parser
and sets ``run=`` (a function of the parsed arguments returning the exit status). ``tools/*.py``
call :func:`run_subcommand` so that they parse and fail exactly as ``davit <subcommand>``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import DavitError

# subcommand -> module of this package
SUBCOMMANDS = {
    "list": "models",
    "predict": "predict",
    "flops": "flops",
    "convert": "convert",
    "export": "export",
    "test": "test",
    "train": "train",
    "benchmark": "benchmark",
    "embed": "embed",
    "index": "index",
    "search": "search",
    "cam": "cam",
    "attention": "attention",
    "serve": "serve",
}


def _add_verbose(parser: argparse.ArgumentParser, default: object = False) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="show debug logs, and the traceback of an error")


def build_parser(prog: str = "davit") -> argparse.ArgumentParser:
    """The ``davit`` parser: ``--version``, ``-v`` and one sub-parser per subcommand."""
    parser = argparse.ArgumentParser(prog=prog, description="DaViT models and tools")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    _add_verbose(parser)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                       help="what to do; `davit COMMAND --help` for its options")
    for module in SUBCOMMANDS.values():
        sub = importlib.import_module(f".{module}", __package__).register(subparsers)
        # SUPPRESS: a subcommand's default must not undo `davit -v COMMAND`
        _add_verbose(sub, default=argparse.SUPPRESS)
    return parser


def run_subcommand(name: str, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parse ``argv`` as the arguments of ``davit <name>`` (error messages start with ``prog``)
    and run it."""
    parser = argparse.ArgumentParser(prog=prog or f"davit {name}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    sub = importlib.import_module(f".{SUBCOMMANDS[name]}", __package__).register(subparsers)
    sub.prog = prog or f"davit {name}"
    _add_verbose(sub)
    args = parser.parse_args([name, *(sys.argv[1:] if argv is None else argv)])
    return execute(args, sub.prog)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return execute(args, f"davit {args.command}")


def execute(args: argparse.Namespace, prog: str) -> int:
    """Run ``args.run(args)``. A :class:`DavitError` or an operating-system error (a missing or
    unwritable file, a full disk) becomes one line on stderr and exit status 1, Ctrl-C exit
    status 130; anything else is a bug and keeps its traceback. ``-v`` shows every traceback."""
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s: %(message)s")
    args.prog = prog  # for a subcommand that reports some failures itself and goes on
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`davit list | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except (DavitError, OSError) as error:
        if verbose:
            raise
        print_error(prog, error)
        return 1


def print_error(prog: str, error: BaseException | str, kind: str = "error") -> None:
    """``prog: error: message`` (or another ``kind``, such as ``warning``) on stderr, the message
    on one line (the error's type's name when it has no text)."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{_rank_prefix()}{prog}: {kind}: {message}", file=sys.stderr)


def _rank_prefix() -> str:
    """``[rank N] `` inside a multi-process run, so that each process's error can be told apart."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return f"[rank {dist.get_rank()}] "
    return ""
