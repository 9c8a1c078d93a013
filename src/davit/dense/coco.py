"""COCO-format detection data for torchvision's detectors: reading an instances file with its
images (bad entries reported, skipped and counted), and bbox / segm mAP with pycocotools' COCOeval.

Category ids are the detector's labels as they are (so ``num_classes`` is the largest id plus one,
the background 0 included).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DatasetError, require

logger = logging.getLogger(__name__)

Target = dict[str, Tensor]


def _quiet(call: Any, *args: Any) -> Any:
    """``call(*args)`` with pycocotools' progress prints swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return call(*args)


def _box_problem(box: list[float], width: int, height: int) -> str | None:
    """Why an ``[x, y, w, h]`` box is unusable in a ``width`` x ``height`` image, or None."""
    if len(box) != 4:
        return "not four numbers"
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return "zero or negative size"
    if x < 0 or y < 0 or x + w > width or y + h > height:
        return "outside the image"
    return None


class CocoDetection(Dataset[tuple[Tensor, Target]]):
    """The images of a COCO instances file with their boxes, labels and masks, as torchvision's
    detectors take them (``image`` float CHW in [0, 1]; ``boxes`` xyxy, ``labels``, ``masks``
    N x H x W uint8, ``image_id``).

    Images whose file is missing and annotations whose box is invalid (zero or negative size,
    outside the image) are skipped, logged one line per kind with the count, and counted in
    :attr:`skipped`. :attr:`coco` is a pycocotools ``COCO`` of what is kept, the ground truth for
    :func:`coco_map`.
    """

    def __init__(self, images: str | Path, annotations: str | Path) -> None:
        require("pycocotools", "dense", "COCO detection training")
        from pycocotools.coco import COCO

        self.root = Path(images)
        self.skipped: Counter[str] = Counter()
        data = self._read(Path(annotations))
        self.coco = COCO()
        self.coco.dataset = self._clean(data)
        _quiet(self.coco.createIndex)
        self.ids = sorted(self.coco.imgs)
        if not self.ids:
            raise DatasetError(f"{annotations}: no usable image (skipped: {dict(self.skipped)})")

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise DatasetError(f"cannot read the COCO annotations {path}: {error}") from error
        if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
            raise DatasetError(f"{path} is not a COCO instances file: it needs 'images', "
                               "'annotations' and 'categories'")
        # pycocotools indexes annotations by id: a repeated id silently replaces the ground truth
        ids = Counter(ann.get("id") for ann in data["annotations"])
        repeated = [ann_id for ann_id, count in ids.items() if count > 1]
        if repeated:
            raise DatasetError(f"{path}: {len(repeated)} annotation id(s) used more than once (first: "
                               f"{repeated[0]}); pycocotools needs unique ids, renumber the annotations")
        return data

    def _clean(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` without missing images and invalid boxes, each kind logged once with a count."""
        missing = [img for img in data["images"] if not (self.root / img["file_name"]).is_file()]
        missing_ids = {img["id"] for img in missing}
        images = [img for img in data["images"] if img["id"] not in missing_ids]
        sizes = {img["id"]: (img["width"], img["height"]) for img in images}
        problems: dict[str, list[Any]] = {}
        annotations = []
        for ann in data["annotations"]:
            if ann["image_id"] not in sizes:
                continue
            problem = _box_problem(ann.get("bbox", []), *sizes[ann["image_id"]])
            if problem is None:
                annotations.append(ann)
            else:
                problems.setdefault(problem, []).append(ann.get("id"))
        if missing:
            self.skipped["missing image"] = len(missing)
            logger.warning("skipped %d image(s) whose file is missing under %s (first: %s)",
                           len(missing), self.root, missing[0]["file_name"])
        for problem, ids in problems.items():
            self.skipped[f"box {problem}"] = len(ids)
            logger.warning("skipped %d annotation(s) with a box %s (first id: %s)", len(ids), problem, ids[0])
        return {**data, "images": images, "annotations": annotations}

    @property
    def num_classes(self) -> int:
        """The detector's classes: the largest category id plus the background."""
        return max(self.coco.cats) + 1

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        try:
            image = Image.open(self.root / info["file_name"]).convert("RGB")
        except OSError as error:
            raise DatasetError(f"cannot read the image {self.root / info['file_name']}: {error}") from error
        anns = self.coco.imgToAnns[image_id]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else \
            np.zeros((0, info["height"], info["width"]), np.uint8)
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
        return pixels, {"boxes": boxes, "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
                        "masks": torch.from_numpy(masks), "image_id": torch.tensor(image_id)}


def collate(batch: list[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """Lists of images and targets, as the detectors take them."""
    return [image for image, _ in batch], [target for _, target in batch]


def to_results(image_id: int, output: Target, mask_threshold: float = 0.5) -> list[dict[str, Any]]:
    """One detector output as COCO result records (xywh boxes; RLE masks where it has masks)."""
    from pycocotools import mask as mask_utils

    boxes = output["boxes"].clone()
    boxes[:, 2:] -= boxes[:, :2]
    records = [{"image_id": image_id, "category_id": int(label), "bbox": box.tolist(), "score": float(score)}
               for box, label, score in zip(boxes, output["labels"], output["scores"])]
    if "masks" in output:
        binary = (output["masks"][:, 0] > mask_threshold).numpy().astype(np.uint8)
        for record, mask in zip(records, binary):
            record["segmentation"] = mask_utils.encode(np.asfortranarray(mask))
    return records


def coco_map(coco: Any, results: list[dict[str, Any]], iou_types: tuple[str, ...] = ("bbox", "segm")
             ) -> dict[str, float]:
    """COCOeval's mAP (``<type>_mAP``, IoU 0.5:0.95) and mAP@0.5 (``<type>_mAP50``) per IoU type,
    over all of ``coco``'s images; 0 for a type without any detection."""
    from pycocotools.cocoeval import COCOeval

    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        usable = [r for r in results if iou_type == "bbox" or "segmentation" in r]
        if not usable:
            metrics.update({f"{iou_type}_mAP": 0.0, f"{iou_type}_mAP50": 0.0})
            continue
        evaluator = COCOeval(coco, _quiet(coco.loadRes, usable), iou_type)
        evaluator.params.imgIds = sorted(coco.imgs)
        for step in (evaluator.evaluate, evaluator.accumulate, evaluator.summarize):
            _quiet(step)
        metrics[f"{iou_type}_mAP"] = max(float(evaluator.stats[0]), 0.0)
        metrics[f"{iou_type}_mAP50"] = max(float(evaluator.stats[1]), 0.0)
    return metrics
