"""Write scikit-learn's digits as class-folder PNGs for ``configs/davit/davit-digits_1xb64.py``:
``python tools/prepare_digits.py [--out data/digits]``.

The 1,797 8x8 scans of ``sklearn.datasets.load_digits`` are split 80/20, stratified, with a fixed
seed, upscaled bicubically to 32x32 and written as 8-bit grey PNGs in one sub-folder per digit:
``<out>/train/<digit>/<n>.png`` (1,437 images) and ``<out>/test/<digit>/<n>.png`` (360), the
folders the config's training and validation loaders read. Needs scikit-learn.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

SPLIT_SEED = 0
SIZE = 32
DEFAULT_OUT = "data/digits"


def write_digits(root: str | Path, size: int = SIZE) -> tuple[int, int]:
    """Write the digits under ``root/train`` and ``root/test`` (80/20 stratified split, seed 0),
    upscaled to ``size`` x ``size``; returns the (train, test) image counts. Files already there
    are kept."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    indices = np.arange(len(digits.target))
    train, test = train_test_split(indices, test_size=0.2, stratify=digits.target,
                                   random_state=SPLIT_SEED)
    root = Path(root)
    for split, chosen in (("train", train), ("test", test)):
        for i in chosen:
            path = root / split / str(digits.target[i]) / f"{i:04d}.png"
            if path.is_file():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * (255 / 16)).round().astype(np.uint8)
            Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC).save(path)
    return len(train), len(test)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/prepare_digits.py",
                                     description="Write scikit-learn's digits as class-folder PNGs "
                                                 "for configs/davit/davit-digits_1xb64.py.")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"folder to write train/ and test/ into (default: {DEFAULT_OUT}, "
                             "where the config looks)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("tools/prepare_digits.py: error: needs scikit-learn: pip install scikit-learn", file=sys.stderr)
        return 1
    n_train, n_test = write_digits(args.out)
    out = Path(args.out)
    print(f"{n_train} training images in {out / 'train'}, {n_test} held-out images in {out / 'test'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
