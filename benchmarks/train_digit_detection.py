"""Train a small DaViT Mask R-CNN on digit scenes and report box and mask mAP@0.5.

``tools/prepare_digit_scenes.py`` writes the scenes (scikit-learn's digit scans pasted on 128x128
canvases, COCO boxes and RLE masks; val scenes use scans the training never sees). The backbone
is first pre-trained as a digit classifier on the train scenes' scans alone (the small-scale
counterpart of an ImageNet-pre-trained backbone; ``--pretrain-epochs 0`` trains from scratch),
then :func:`davit.dense.train.train_detection` trains the detector and evaluates it with
pycocotools. The detector is sized for 128-pixel scenes with 24-32-pixel digits: images kept at
128 pixels, anchors of 16-128 pixels, a 64-channel FPN, a two-layer mask head and fewer proposals
than torchvision's COCO defaults.

The last line printed is a JSON object: ``box_mAP50``, ``mask_mAP50`` (on the val scenes),
``box_mAP``, ``mask_mAP``, ``seconds`` (wall time of everything: scenes, pre-training, training,
evaluation), ``pretrain_seconds`` (the scenes and the pre-training, included in ``seconds``) and
``pretrain_top1`` (the classifier's accuracy on the val scans), ``epochs``, ``threads`` and the
command. The val predictions are drawn to
``docs/images/digit_detection.png``.

One intra-op thread by default: this detector's operations are small, and on a machine busy with
other work two threads that wait for each other at every operation are several times slower.

    python benchmarks/train_digit_detection.py [--work-dir DIR] [--epochs N] [--train N] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from prepare_digit_scenes import digit_pixels, scan_split, write_digit_scenes  # noqa: E402

from davit.dense.train import DetectionOptions, train_detection  # noqa: E402
from davit.model import DaViTClassifier  # noqa: E402

ARCH = {"embed_dims": [32, 64, 128, 256], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8], "window_size": 4}
# 2-4 objects per scene: fewer proposals and sampled ROIs than torchvision's COCO defaults
DETECTOR = {"rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": 200, "rpn_pre_nms_top_n_test": 300,
            "rpn_post_nms_top_n_test": 100, "box_batch_size_per_image": 64, "box_detections_per_img": 20}
ANCHORS = (16, 24, 32, 64, 128)  # P2-P6: the digits' boxes are 10-32 pixels
PICTURE = REPO / "docs" / "images" / "digit_detection.png"
CROP = 32  # the pre-training images: one digit, 24-32 pixels, somewhere on a 32x32 canvas
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the detector's normalisation


def digit_crops(scans: np.ndarray, rng: np.random.Generator) -> Tensor:
    """Each scan drawn 24-32 pixels wide at a random place on a black 32x32 canvas, as the scenes
    draw them, normalised as torchvision's detectors normalise their input (N, 3, 32, 32)."""
    crops = np.zeros((len(scans), CROP, CROP), np.float32)
    for crop, scan in zip(crops, scans):
        side = int(rng.integers(24, CROP + 1))
        x, y = (int(v) for v in rng.integers(0, CROP - side + 1, 2))
        crop[y:y + side, x:x + side] = digit_pixels(scan, side) / 255
    images = torch.from_numpy(crops)[:, None].expand(-1, 3, -1, -1)
    return (images - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def pretrain_backbone(path: Path, epochs: int, seed: int = 0, batch_size: int = 64, lr: float = 2e-3
                      ) -> float:
    """Train a DaViT of :data:`ARCH` to classify the train scenes' scans, save it to ``path`` (a
    classification checkpoint: backbone and head) and return its top-1 accuracy on the val
    scenes' scans (which it never trains on)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    train_pool, val_pool = scan_split(seed)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = DaViTClassifier(ARCH, num_classes=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(train_pool) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    labels = torch.from_numpy(digits.target)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    for _ in range(epochs):
        order = rng.permutation(train_pool)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            loss = loss_fn(model(digit_crops(digits.images[batch], rng)), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    with torch.no_grad():
        predicted = model(digit_crops(digits.images[val_pool], rng)).argmax(1)
    torch.save(model.state_dict(), path)
    return float((predicted == labels[val_pool]).float().mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train", type=int, default=400, help="training scenes")
    parser.add_argument("--val", type=int, default=100, help="validation scenes")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--pretrain-epochs", type=int, default=6, help="0: the backbone starts random")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="digit_detection_"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_digit_scenes(work / "data", args.train, args.val)
    weights, top1 = None, None
    if args.pretrain_epochs > 0:
        weights = work / "backbone.pth"
        top1 = pretrain_backbone(weights, args.pretrain_epochs)
        logging.info("pre-trained backbone: top-1 %.3f on the val scans", top1)
    pretrain_seconds = time.perf_counter() - start
    data = work / "data"
    result = train_detection(DetectionOptions(
        data / "train" / "images", data / "train" / "annotations.json", data / "val" / "images",
        data / "val" / "annotations.json", work / "run", arch=ARCH, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, warmup=50, mask_head=(64, 64), fpn_channels=64,
        anchor_sizes=ANCHORS, backbone_weights=weights, detector_options=DETECTOR, progress=False))
    PICTURE.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "run" / "predictions.png", PICTURE)
    print(json.dumps({"box_mAP50": round(result["bbox_mAP50"], 4), "mask_mAP50": round(result["segm_mAP50"], 4),
                      "box_mAP": round(result["bbox_mAP"], 4), "mask_mAP": round(result["segm_mAP"], 4),
                      "seconds": round(time.perf_counter() - start, 1),
                      "pretrain_seconds": round(pretrain_seconds, 1), "pretrain_top1": top1,
                      "epochs": args.epochs, "train_scenes": args.train, "val_scenes": args.val,
                      "threads": args.threads, "losses": [round(v, 3) for v in result["losses"]],
                      "command": "python " + " ".join(sys.argv)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
