"""Train a small DaViT Mask R-CNN from scratch on digit scenes and report box and mask mAP@0.5.

``tools/prepare_digit_scenes.py`` writes the scenes (scikit-learn's digit scans pasted on 128x128
canvases, COCO boxes and RLE masks; val scenes use scans the training never sees);
:func:`davit.dense.train.train_detection` trains and evaluates with pycocotools. The last line
printed is a JSON object: ``box_mAP50``, ``mask_mAP50`` (on the val scenes), ``box_mAP``,
``mask_mAP``, ``seconds`` (wall time of preparation, training and evaluation), ``epochs``,
``threads`` and the command. The val predictions are drawn to ``docs/images/digit_detection.png``.

    python benchmarks/train_digit_detection.py [--work-dir DIR] [--epochs 5] [--train 160]
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from prepare_digit_scenes import write_digit_scenes  # noqa: E402

from davit.dense.train import DetectionOptions, train_detection  # noqa: E402

ARCH = {"embed_dims": [32, 64, 128, 256], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}
# fewer proposals and sampled ROIs than torchvision's COCO defaults: 2-4 objects per scene
DETECTOR = {"rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": 200, "rpn_pre_nms_top_n_test": 300,
            "rpn_post_nms_top_n_test": 100, "box_batch_size_per_image": 64, "box_detections_per_img": 20}
PICTURE = REPO / "docs" / "images" / "digit_detection.png"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train", type=int, default=160, help="training scenes")
    parser.add_argument("--val", type=int, default=40, help="validation scenes")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="digit_detection_"))
    start = time.perf_counter()
    write_digit_scenes(work / "data", args.train, args.val)
    data = work / "data"
    result = train_detection(DetectionOptions(
        data / "train" / "images", data / "train" / "annotations.json", data / "val" / "images",
        data / "val" / "annotations.json", work / "run", arch=ARCH, epochs=args.epochs, lr=args.lr,
        warmup=20, mask_head=(64, 64), detector_options=DETECTOR, progress=False))
    PICTURE.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "run" / "predictions.png", PICTURE)
    print(json.dumps({"box_mAP50": result["bbox_mAP50"], "mask_mAP50": result["segm_mAP50"],
                      "box_mAP": result["bbox_mAP"], "mask_mAP": result["segm_mAP"],
                      "seconds": round(time.perf_counter() - start, 1), "epochs": args.epochs,
                      "train_scenes": args.train, "val_scenes": args.val, "threads": args.threads,
                      "losses": [round(v, 3) for v in result["losses"]],
                      "command": "python " + " ".join(sys.argv)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
