"""``davit cam``: class activation maps laid over the images (:mod:`davit.vis.cam`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from ..api import Model, get_model
from ..checkpoint.resolve import model_and_weights
from ..engine.infer import DEFAULT_MODEL, expand_inputs
from ..errors import ImageLoadError
from ..vis.cam import CAM_METHODS, class_activation_map
from ..vis.drawing import DISPLAY_SIZE, describe_class, with_caption
from .app import print_error
from .argtypes import add_device, add_model_and_checkpoint, add_random_weights, non_negative_int, weights_seed

DESCRIPTION = """Save, for each image, its class activation map (grad-cam) laid over the part of
the image the model sees (its centre crop; what the crop leaves out is dimmed) as
OUT_DIR/<image stem>_<method>_class<N>.png. An unreadable image is reported and the others done
(exit status 1)."""


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--checkpoint``, ``--random-weights``, ``--seed``, ``--device`` and ``--display-size``,
    shared by the picture subcommands."""
    add_model_and_checkpoint(parser, DEFAULT_MODEL)
    add_random_weights(parser, "the pictures then show the architecture, not what a trained "
                               "model learned")
    add_device(parser)
    parser.add_argument("--display-size", type=non_negative_int, default=DISPLAY_SIZE,
                        help=f"longest side of the saved pictures in pixels; 0 keeps the image's "
                             f"(default: {DISPLAY_SIZE})")


def load_model(args: argparse.Namespace) -> Model:
    """The model the options of :func:`add_model_options` name."""
    model, weights = model_and_weights(args.model, args.checkpoint, args.random_weights, DEFAULT_MODEL)
    with weights_seed(args.seed):
        return get_model(model, pretrained=weights, device=args.device)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("cam", help="class activation maps (grad-cam) over images",
                                   description=DESCRIPTION)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE",
                        help="image files, folders (searched recursively) or quoted patterns")
    parser.add_argument("--out-dir", required=True, metavar="DIR", help="where the pictures go")
    add_model_options(parser)
    parser.add_argument("--target-class", metavar="CLASS",
                        help="class index or name to explain (default: each image's best class)")
    parser.add_argument("--method", choices=list(CAM_METHODS), default="gradcam",
                        help="gradcam (default), gradcam++, scorecam (one forward pass per channel: "
                             "slow) or eigencam (no gradient; the same map for every class)")
    parser.add_argument("--stage", type=int, default=-1,
                        help="the stage whose output is explained, from 0; negative counts from the end "
                             "(default: -1, the last, which feeds the classifier)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    paths = expand_inputs(args.inputs)
    model = load_model(args)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in tqdm(paths, unit="img", desc="cam", disable=len(paths) < 2):
        try:
            result = class_activation_map(model, path, args.target_class, args.method, args.stage)
        except ImageLoadError as error:
            with tqdm.external_write_mode():
                print_error(args.prog, error)
            failed += 1
            continue
        explained = describe_class(result.target_class, result.class_name)
        caption = [(f"{args.method}, stage {result.stage}: {explained}, p={result.score:.3f}", (0, 0, 0))]
        target = out_dir / f"{path.stem}_{args.method.replace('+', 'p')}_class{result.target_class}.png"
        with_caption(result.overlay(args.display_size), caption).save(target)
        with tqdm.external_write_mode():
            print(f"{path}: {target}")
    return 1 if failed else 0
