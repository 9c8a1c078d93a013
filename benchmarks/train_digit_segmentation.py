"""Train segmentation_models_pytorch's UPerNet on a small DaViT encoder over the digit scenes as
semantic masks (11 classes: background and the ten digits) and report the mIoU on held-out scenes.

``tools/prepare_digit_scenes.py`` writes the scenes and their class maps (val scenes use scans the
training never sees). The encoder, registered with smp as ``davit-digits`` by
:func:`davit.dense.register_encoder`, is the detection benchmark's architecture, first pre-trained
as a digit classifier on the train scenes' scans alone (``--pretrain-epochs 0``: from scratch).

The last line printed is a JSON object: ``mIoU`` (mean over the 11 classes of the val scenes'
pixels), ``mIoU_digits`` (over the ten digits alone), ``pixel_accuracy``, ``seconds`` (wall time
of everything: scenes, pre-training, training, evaluation), ``pretrain_seconds``,
``pretrain_top1``, ``epochs``, ``threads`` and the command.

    python benchmarks/train_digit_segmentation.py [--work-dir DIR] [--epochs N] [--train N] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
from train_digit_detection import ARCH, IMAGENET_MEAN, IMAGENET_STD, pretrain_backbone  # noqa: E402

sys.path.insert(0, str(REPO.parent / "tools"))
from prepare_digit_scenes import write_digit_scenes  # noqa: E402

from davit.dense import register_encoder, segmentation_model  # noqa: E402
from davit.errors import TrainError  # noqa: E402

CLASSES = 11  # background and the digits 0-9 (class = digit + 1)


def read_split(root: Path) -> tuple[Tensor, Tensor]:
    """A split's scenes, normalised as the pre-training normalised its crops (N, 3, H, W), and
    their class maps (N, H, W)."""
    names = sorted(path.name for path in (root / "images").glob("*.png"))
    images = np.stack([np.asarray(Image.open(root / "images" / name).convert("RGB")) for name in names])
    classes = np.stack([np.asarray(Image.open(root / "semantic" / name)) for name in names])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (pixels - mean) / std, torch.from_numpy(classes).long()


@torch.no_grad()
def confusion(model: nn.Module, images: Tensor, classes: Tensor, batch_size: int = 16) -> Tensor:
    """The (true, predicted) pixel counts of ``model`` on the scenes, CLASSES x CLASSES."""
    model.eval()
    counts = torch.zeros(CLASSES * CLASSES, dtype=torch.long)
    for start in range(0, len(images), batch_size):
        predicted = model(images[start:start + batch_size]).argmax(1)
        counts += torch.bincount((classes[start:start + batch_size] * CLASSES + predicted).flatten(),
                                 minlength=CLASSES * CLASSES)
    return counts.reshape(CLASSES, CLASSES)


def iou_per_class(counts: Tensor) -> Tensor:
    """Intersection over union of each class from a confusion matrix."""
    hits = counts.diag().double()
    return hits / (counts.sum(0) + counts.sum(1) - counts.diag()).double().clamp(min=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train", type=int, default=400, help="training scenes")
    parser.add_argument("--val", type=int, default=100, help="validation scenes")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--pretrain-epochs", type=int, default=6, help="0: the encoder starts random")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="digit_segmentation_"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_digit_scenes(work / "data", args.train, args.val)
    weights, top1 = None, None
    if args.pretrain_epochs > 0:
        weights = work / "backbone.pth"
        top1 = pretrain_backbone(weights, args.pretrain_epochs)
        logging.info("pre-trained encoder: top-1 %.3f on the val scans", top1)
    pretrain_seconds = time.perf_counter() - start
    train_images, train_classes = read_split(work / "data" / "train")
    val_images, val_classes = read_split(work / "data" / "val")
    model = segmentation_model("upernet", register_encoder("davit-digits", ARCH), classes=CLASSES,
                               backbone_weights=weights, decoder_channels=64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * (len(train_images) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps, pct_start=0.1)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    losses = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(train_images), generator=generator)
        epoch_losses = []
        for first in range(0, len(order) - args.batch_size + 1, args.batch_size):
            batch = order[first:first + args.batch_size]
            loss = loss_fn(model(train_images[batch]), train_classes[batch])
            if not math.isfinite(loss.item()):
                raise TrainError(f"the loss is {loss.item()} at epoch {epoch}; lower --lr")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_losses.append(loss.item())
        losses.append(sum(epoch_losses) / len(epoch_losses))
        ious = iou_per_class(confusion(model, val_images, val_classes))
        logging.info("epoch %d: loss %.4f, val mIoU %.4f", epoch, losses[-1], ious.mean())
    counts = confusion(model, val_images, val_classes)
    ious = iou_per_class(counts)
    print(json.dumps({"mIoU": round(float(ious.mean()), 4), "mIoU_digits": round(float(ious[1:].mean()), 4),
                      "pixel_accuracy": round(float(counts.diag().sum() / counts.sum()), 4),
                      "IoU_per_class": [round(float(v), 3) for v in ious],
                      "seconds": round(time.perf_counter() - start, 1),
                      "pretrain_seconds": round(pretrain_seconds, 1), "pretrain_top1": top1,
                      "epochs": args.epochs, "train_scenes": args.train, "val_scenes": args.val,
                      "threads": args.threads, "losses": [round(v, 3) for v in losses],
                      "command": "python " + " ".join(sys.argv)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
