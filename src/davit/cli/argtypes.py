"""argparse value types and the options that several subcommands share, spelled once."""
from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..errors import InvalidArgumentError
from ..model import SEMANTICS


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port from 0 to 65535, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or a positive integer, got {text}")
    return value


def add_input_size(parser: argparse.ArgumentParser) -> None:
    """``--input-size H W`` (default 224 224)."""
    parser.add_argument("--input-size", nargs=2, type=positive_int, default=[224, 224],
                        metavar=("H", "W"), help="image height and width (default: 224 224)")


def add_semantics(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--semantics official|mmpretrain`` (default official)."""
    parser.add_argument("--semantics", choices=SEMANTICS, default="official",
                        help=help or "official (default): the paper's model; mmpretrain: its port's "
                                     "numerics, to reproduce mmpretrain's numbers")


def add_model_and_checkpoint(parser: argparse.ArgumentParser, default_model: str) -> None:
    """``--model SOURCE`` (default: the checkpoint's own card, else ``default_model``) and
    ``--checkpoint SOURCE``."""
    parser.add_argument("--model",
                        help="zoo name (davit list), architecture name, JSON architecture, config (a .py "
                             "config is code and is executed: only trusted ones; .yaml is data), "
                             "checkpoint, folder or hf-hub: name (default: the --checkpoint's own "
                             f"model card, else {default_model})")
    add_checkpoint(parser)


def add_checkpoint(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint SOURCE``: weights other than the model's published ones."""
    parser.add_argument("--checkpoint",
                        help="weights: path, URL or hf-hub: name (default: the model's)")


def add_config_options(parser: argparse.ArgumentParser, loader: str, work_dir_help: str) -> None:
    """The config positional and ``--cfg-options`` / ``--work-dir``, as mmpretrain's tools take them;
    ``loader`` names the dataloader the override example uses."""
    parser.add_argument("config", help="config file, e.g. configs/davit/davit-tiny_4xb256_in1k.py; a .py config "
                                       "is Python and is executed (load only trusted ones, as with mmengine), "
                                       ".json and .yaml configs are data and never run anything")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help=f"override config settings, e.g. {loader}.batch_size=32")
    parser.add_argument("--work-dir", help=work_dir_help)


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device``, with the rule torchrun runs follow."""
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available); "
                                          "under torchrun each process takes GPU LOCAL_RANK")


def add_random_weights(parser: argparse.ArgumentParser, what: str) -> None:
    """``--random-weights`` (build the model without weights: offline, nothing downloaded) and
    ``--seed N`` (default 0), the seed the random weights are drawn from; ``what`` says what the
    command's output then means. Build the model under :func:`weights_seed`."""
    parser.add_argument("--random-weights", action="store_true",
                        help=f"build the model with random weights (offline: nothing is downloaded; {what})")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="the random weights are drawn from this seed, so the same command gives "
                             "the same answer (default: 0)")


@contextmanager
def weights_seed(seed: int) -> Iterator[None]:
    """Run the block (a model build) with torch's generator seeded with ``seed``, leaving the
    global random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def add_engine(parser: argparse.ArgumentParser) -> None:
    """``--engine torch|ray`` and where and how wide a Ray run goes."""
    parser.add_argument("--engine", choices=("torch", "ray"), default="torch",
                        help="torch: this process (or torchrun's); ray: Ray Data actors on the cluster at "
                             "--ray-address (default: torch)")
    parser.add_argument("--ray-address", help="with --engine ray: the cluster to join ('auto': the running "
                        "one; default: RAY_ADDRESS, else a local Ray started for the run)")
    parser.add_argument("--concurrency", type=positive_int, default=1,
                        help="with --engine ray: actors, each holding the model once (default: 1)")
    parser.add_argument("--num-gpus", type=float, default=0.0,
                        help="with --engine ray: GPUs per actor (default: 0, CPU actors)")


def add_int8(parser: argparse.ArgumentParser, how: str, use: str) -> None:
    """``--int8`` and its calibration, agreement and speed options; ``how`` names the quantiser,
    ``use`` what the command does with the model (write it, classify with it, serve it)."""
    parser.add_argument("--int8", action="store_true",
                        help=f"quantise to int8 ({how}; needs --calibration); used only where its top-1 agrees "
                             "with float32's and it is faster than the float model on this machine")
    parser.add_argument("--calibration", metavar="FOLDER",
                        help="with --int8: images to calibrate the int8 ranges on (a folder, or a wds: or hf: source)")
    parser.add_argument("--holdout", metavar="FOLDER",
                        help="with --int8: images the int8 top-1 is compared with float32's on (default: the "
                             "calibration images, which flatters int8)")
    parser.add_argument("--min-agreement", type=float, default=0.99,
                        help="with --int8: refuse the int8 model when its top-1 agrees with float32's on a "
                             "smaller share of the images (default: 0.99)")
    parser.add_argument("--allow-slower-int8", action="store_true",
                        help=f"{use} the int8 model even when it is slower than the float model on this machine "
                             "(refused by default: then int8 only costs accuracy)")


def check_int8_args(args: argparse.Namespace) -> None:
    """Refuse ``--calibration``, ``--holdout`` or ``--allow-slower-int8`` without ``--int8``, and
    ``--int8`` without ``--calibration``."""
    if not args.int8:
        if args.calibration or args.holdout or args.allow_slower_int8:
            raise InvalidArgumentError("--calibration, --holdout and --allow-slower-int8 go with --int8")
    elif not args.calibration:
        raise InvalidArgumentError("--int8 needs --calibration FOLDER: images like the ones the model will see, to "
                                   "choose the int8 ranges")
