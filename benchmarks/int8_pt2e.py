"""int8 in PyTorch (torchao PT2E + inductor, ``davit.quantize.quantize_pt2e``) against this library's
fastest float eager path on this CPU (bf16 where native, else fp32): speed on DaViT-tiny at batch 16,
and top-1 agreement with fp32 on a trained model.

    python benchmarks/int8_pt2e.py                                     # speed (random weights)
    python benchmarks/int8_pt2e.py --checkpoint work/best.pth --data data/digits   # and agreement

Speed: DaViT-tiny, 224 x 224, random weights, calibrated on 32 random images; int8 and bf16 timed
in blocks in one process (``QuantizationReport``). Agreement: the model of ``--checkpoint``
(``benchmarks/train_digits.py`` trains the digits one) calibrated on up to 256 images of
``DATA/train`` and compared with fp32 on every image of ``DATA/test``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from davit.checkpoint.build import get_model
from davit.data.calibration import folder_images
from davit.model import build_model
from davit.quantize import quantize_pt2e


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", help="a trained classifier, for the agreement check")
    parser.add_argument("--data", help="its data: DATA/train (calibration) and DATA/test (held out)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    _, report = quantize_pt2e(model, torch.randn(32, 3, 224, 224), min_agreement=0.0, timing_repeats=6)
    print(f"DaViT-tiny 224, batch 16, {args.threads} threads: int8 {report.int8_images_per_second:.1f} img/s, "
          f"{report.float_precision} eager {report.float_images_per_second:.1f} img/s: {report.speedup:.2f}x")
    if args.checkpoint and args.data:
        trained = get_model(args.checkpoint, pretrained=args.checkpoint).eval()
        transform = trained.card.preprocessing.transform()
        calibration = folder_images(Path(args.data) / "train", transform, limit=256)
        holdout = folder_images(Path(args.data) / "test", transform)
        _, checked = quantize_pt2e(trained, calibration, holdout, min_agreement=0.0, timing_repeats=0)
        print(checked.summary())


if __name__ == "__main__":
    main()
