"""Write a small real detection set from scikit-learn's digit scans:
``python tools/prepare_digit_scenes.py [--out data/digit_scenes] [--train 400] [--val 100]``.

Each scene is a ``size`` x ``size`` black canvas with 2-4 non-overlapping digits of
``sklearn.datasets.load_digits`` (8x8 scans upscaled bicubically to 24-32 px). A digit's mask is
its scan's pixels above a threshold, its box the mask's extent. Train and val scenes draw from
disjoint scans (an 80/20 split). Deterministic for a seed. Written per split:

- ``<out>/<split>/images/<n>.png`` (RGB), ``<out>/<split>/annotations.json`` (COCO instances:
  categories 1-10 named "0"-"9", xywh boxes, RLE masks);
- ``<out>/<split>/semantic/<n>.png``: the same scene as a class per pixel (0 background,
  digit + 1), for semantic segmentation.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DEFAULT_OUT = "data/digit_scenes"
SIZE = 128
THRESHOLD = 64  # of 255: a scan's pixel brighter than this belongs to the digit's mask


def digit_pixels(scan: np.ndarray, side: int) -> np.ndarray:
    """An 8x8 scan (0-16) as ``side`` x ``side`` uint8 pixels."""
    pixels = Image.fromarray((scan * (255 / 16)).round().astype(np.uint8))
    return np.asarray(pixels.resize((side, side), Image.Resampling.BICUBIC))


def _place(rng: np.random.Generator, side: int, size: int, taken: list[tuple[int, int, int]]
           ) -> tuple[int, int] | None:
    """A top-left corner for a ``side`` square that overlaps none of ``taken`` (x, y, side)."""
    for _ in range(50):
        x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
        if all(x + side <= tx or tx + ts <= x or y + side <= ty or ty + ts <= y for tx, ty, ts in taken):
            return x, y
    return None


def _scene(rng: np.random.Generator, scans: np.ndarray, labels: np.ndarray, pool: np.ndarray,
           size: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, np.ndarray]]]:
    """A canvas, its class map and its (digit, full-size mask) instances."""
    canvas = np.zeros((size, size), np.uint8)
    semantic = np.zeros((size, size), np.uint8)
    instances: list[tuple[int, np.ndarray]] = []
    taken: list[tuple[int, int, int]] = []
    for index in rng.choice(pool, int(rng.integers(2, 5)), replace=False):
        side = int(rng.integers(24, 33))
        corner = _place(rng, side, size, taken)
        if corner is None:
            continue
        x, y = corner
        taken.append((x, y, side))
        pixels = digit_pixels(scans[index], side)
        canvas[y:y + side, x:x + side] = pixels
        mask = np.zeros((size, size), np.uint8)
        mask[y:y + side, x:x + side] = pixels > THRESHOLD
        semantic[mask > 0] = labels[index] + 1
        instances.append((int(labels[index]), mask))
    return canvas, semantic, instances


def _annotation(ann_id: int, image_id: int, digit: int, mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask))
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return {"id": ann_id, "image_id": image_id, "category_id": digit + 1, "bbox": [x, y, w, h],
            "area": float(mask_utils.area(rle)), "iscrowd": 0,
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}


def write_split(root: Path, count: int, pool: np.ndarray, seed: int, size: int = SIZE) -> int:
    """Write ``count`` scenes of the scans ``pool`` under ``root``; returns the instance count."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "semantic").mkdir(exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id in range(1, count + 1):
        canvas, semantic, instances = _scene(rng, digits.images, digits.target, pool, size)
        name = f"{image_id:06d}.png"
        Image.fromarray(np.stack([canvas] * 3, -1)).save(root / "images" / name)
        Image.fromarray(semantic).save(root / "semantic" / name)
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        for digit, mask in instances:
            annotations.append(_annotation(len(annotations) + 1, image_id, digit, mask))
    categories = [{"id": d + 1, "name": str(d)} for d in range(10)]
    (root / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    return len(annotations)


def scan_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The indices of the scans the train scenes draw from (80%) and of those the val scenes
    draw from (20%), for ``seed``: anything else trained on the digits (a backbone's
    pre-training) must keep to the first to leave the val scenes unseen."""
    scans = np.random.default_rng(seed).permutation(1797)
    cut = int(len(scans) * 0.8)
    return scans[:cut], scans[cut:]


def write_digit_scenes(out: str | Path, train: int = 400, val: int = 100, seed: int = 0,
                       size: int = SIZE) -> dict[str, int]:
    """Write the train and val splits under ``out``; returns each split's instance count."""
    train_pool, val_pool = scan_split(seed)
    out = Path(out)
    return {"train": write_split(out / "train", train, train_pool, seed + 1, size),
            "val": write_split(out / "val", val, val_pool, seed + 2, size)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/prepare_digit_scenes.py",
                                     description="Write digit scenes as a COCO detection set.")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--train", type=int, default=400, help="training scenes (default 400)")
    parser.add_argument("--val", type=int, default=100, help="validation scenes (default 100)")
    parser.add_argument("--size", type=int, default=SIZE, help=f"canvas side in pixels (default {SIZE})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    counts = write_digit_scenes(args.out, args.train, args.val, args.seed, args.size)
    print(f"wrote {args.train} train scenes ({counts['train']} digits) and {args.val} val scenes "
          f"({counts['val']} digits) under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
