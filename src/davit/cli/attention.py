"""``davit attention``: DaViT's window and channel attention in one block, as pictures
(:mod:`davit.vis.attention`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..vis.attention import block_attention, save_attention_pictures
from .cam import add_model_options, load_model

DESCRIPTION = """For one block of one stage, save OUT_DIR/<stem>_stage<S>_block<B>_window.png: the
image with the window that holds the chosen pixel's token, then one panel per head showing where
that token attends inside its window; <...>_channel.png: each group's channel-attention matrix;
<...>.npz: both probability arrays (window_probabilities (heads, T, T), channel_probabilities
(groups, d, d))."""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("attention", help="pictures of one block's window and channel attention",
                                   description=DESCRIPTION)
    parser.add_argument("image", metavar="IMAGE", help="an image file")
    parser.add_argument("--out-dir", required=True, metavar="DIR", help="where the pictures go")
    add_model_options(parser)
    parser.add_argument("--stage", type=int, default=-2,
                        help="stage, from 0; negative counts from the end (default: -2, whose windows are "
                             "7x7 tokens of 16 pixels on a 224 crop)")
    parser.add_argument("--block", type=int, default=0, help="block of the stage, from 0 (default: 0)")
    parser.add_argument("--pixel", type=float, nargs=2, metavar=("X", "Y"),
                        help="the pixel (column, row of the original image) whose token's attention is "
                             "shown (default: the centre of the region the model sees)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    model = load_model(args)
    result = block_attention(model, args.image, args.stage, args.block,
                             (args.pixel[0], args.pixel[1]) if args.pixel else None)
    name = f"{Path(args.image).stem}_stage{result.stage}_block{result.block}"
    for path in save_attention_pictures(result, args.out_dir, name, args.display_size):
        print(path)
    return 0
