"""Training torchvision's Mask R-CNN / Faster R-CNN on DaViT with a COCO-format dataset: a plain
loop (:func:`train_one_epoch`, :func:`evaluate`, :func:`train_detection`), bbox and segm mAP
from pycocotools, a checkpoint and a picture of predictions in the work directory.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from ..errors import InvalidArgumentError, TrainError
from .coco import CocoDetection, coco_map, collate, to_results
from .detection import FPN_CHANNELS, BackboneWeights, fasterrcnn, maskrcnn

logger = logging.getLogger(__name__)


@dataclass
class DetectionOptions:
    """What :func:`train_detection` trains on and how.

    ``arch`` is what :func:`davit.dense.maskrcnn` takes (a name or a dict of
    :class:`~davit.model.DaViTArch` fields); ``image_size`` is the detector's ``min_size`` and
    ``max_size``; ``lr`` AdamW's peak rate, reached after ``warmup`` steps and cosine-annealed.
    ``mask_head`` is the widths of the mask head's 3x3 convolutions (torchvision's: four of 256;
    narrower ones train several times faster on a CPU), ``fpn_channels`` the FPN's width.
    ``anchor_sizes`` is one anchor size per FPN level (P2-P6; torchvision's 32-512 suit COCO, not
    small objects), each with aspect ratios 0.5, 1 and 2. ``backbone_weights`` starts the backbone
    (a classification checkpoint, say; None: random). ``detector_options`` go to torchvision.
    """

    train_images: Path
    train_annotations: Path
    val_images: Path
    val_annotations: Path
    work_dir: Path
    arch: str | dict[str, Any] = "tiny"
    detector: str = "maskrcnn"
    epochs: int = 12
    batch_size: int = 4
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup: int = 50
    image_size: int = 128
    seed: int = 0
    progress: bool = True
    max_steps: int | None = None  # stop each epoch after this many steps (quick checks)
    mask_head: tuple[int, ...] = (256, 256, 256, 256)
    fpn_channels: int = FPN_CHANNELS
    anchor_sizes: tuple[int, ...] | None = None
    backbone_weights: BackboneWeights = None
    detector_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.detector not in ("maskrcnn", "fasterrcnn"):
            raise InvalidArgumentError(f"detector must be 'maskrcnn' or 'fasterrcnn', not {self.detector!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise InvalidArgumentError("epochs and batch_size must be at least 1")
        if self.anchor_sizes is not None and len(self.anchor_sizes) != 5:
            raise InvalidArgumentError(f"anchor_sizes needs one size per FPN level P2-P6 (5), "
                                       f"got {list(self.anchor_sizes)}")


def build_detector(options: DetectionOptions, num_classes: int) -> nn.Module:
    """The options' detector for ``num_classes`` (background included); its backbone starts from
    ``backbone_weights``, the rest randomly."""
    settings: dict[str, Any] = {"min_size": options.image_size, "max_size": options.image_size,
                                "fpn_channels": options.fpn_channels}
    if options.anchor_sizes is not None:
        settings["rpn_anchor_generator"] = AnchorGenerator(tuple((size,) for size in options.anchor_sizes),
                                                           ((0.5, 1.0, 2.0),) * len(options.anchor_sizes))
    settings.update(options.detector_options)
    weights = options.backbone_weights or False
    if options.detector == "fasterrcnn":
        return fasterrcnn(options.arch, num_classes, backbone_weights=weights, **settings)
    return maskrcnn(options.arch, num_classes, backbone_weights=weights, mask_head_channels=options.mask_head,
                    **settings)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, loader: DataLoader, epoch: int,
                    progress: bool = True, max_steps: int | None = None) -> list[float]:
    """One pass over ``loader``; returns each step's total loss."""
    from tqdm import tqdm

    model.train()
    losses: list[float] = []
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, leave=False)
    for step, (images, targets) in enumerate(bar):
        if max_steps is not None and step >= max_steps:
            break
        loss_dict = model(images, targets)
        loss = sum(loss_dict.values())
        if not math.isfinite(loss.item()):
            raise TrainError(f"the loss is {loss.item()} at epoch {epoch}, step {step}: "
                             f"{ {k: v.item() for k, v in loss_dict.items()} }; lower the learning rate")
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    logger.info("epoch %d: mean loss %.4f over %d steps", epoch, sum(losses) / max(len(losses), 1), len(losses))
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, dataset: CocoDetection, batch_size: int = 4) -> dict[str, float]:
    """bbox (and, for Mask R-CNN, segm) mAP and mAP@0.5 of ``model`` on ``dataset``."""
    model.eval()
    results: list[dict[str, Any]] = []
    for images, targets in DataLoader(dataset, batch_size, collate_fn=collate):
        for target, output in zip(targets, model(images)):
            results += to_results(int(target["image_id"]), output)
    iou_types = ("bbox", "segm") if getattr(model.roi_heads, "has_mask", lambda: False)() else ("bbox",)
    return coco_map(dataset.coco, results, iou_types)


@torch.no_grad()
def draw_predictions(model: nn.Module, dataset: CocoDetection, path: Path, count: int = 4,
                     score: float = 0.5, min_side: int = 256) -> Path:
    """Save ``count`` of ``dataset``'s images with the boxes (and masks) ``model`` predicts above
    ``score`` as one PNG at ``path``; labels are the category names. Images smaller than
    ``min_side`` are enlarged (nearest neighbour) first, so that the labels stay readable."""
    model.eval()
    names = {cat["id"]: cat["name"] for cat in dataset.coco.dataset["categories"]}
    panels = []
    for index in range(min(count, len(dataset))):
        image, _ = dataset[index]
        output = model([image])[0]
        keep = output["scores"] > score
        scale = max(1, math.ceil(min_side / min(image.shape[-2:])))
        picture = (nn.functional.interpolate(image[None], scale_factor=scale)[0] * 255).to(torch.uint8)
        if "masks" in output and keep.any():
            masks = nn.functional.interpolate(output["masks"][keep], scale_factor=scale)[:, 0] > 0.5
            picture = draw_segmentation_masks(picture, masks, alpha=0.4)
        if keep.any():
            labels = [names.get(int(label), str(int(label))) for label in output["labels"][keep]]
            picture = draw_bounding_boxes(picture, output["boxes"][keep] * scale, labels, colors="yellow", width=2)
        panels.append(picture)
    grid = make_grid(panels, nrow=len(panels), padding=4, pad_value=255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return path


def train_detection(options: DetectionOptions) -> dict[str, Any]:
    """Train, evaluate on the val set after every epoch, write ``final.pth``, ``predictions.png``
    and ``metrics.jsonl`` under the work directory; returns the last evaluation with ``skipped``
    (the bad entries of each set), ``losses`` (each epoch's mean) and ``seconds``."""
    torch.manual_seed(options.seed)
    start = time.perf_counter()
    train_set = CocoDetection(options.train_images, options.train_annotations)
    val_set = CocoDetection(options.val_images, options.val_annotations)
    num_classes = max(train_set.num_classes, val_set.num_classes)
    model = build_detector(options, num_classes)
    loader = DataLoader(train_set, options.batch_size, shuffle=True, collate_fn=collate, drop_last=True,
                        generator=torch.Generator().manual_seed(options.seed))
    steps = options.epochs * min(len(loader), options.max_steps or len(loader))
    if steps < 1:
        raise TrainError(f"no training step: {len(train_set)} images for batches of {options.batch_size}")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=options.lr,
                                  weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(options.warmup, 1))
                                                  * 0.5 * (1 + math.cos(math.pi * s / steps)))
    work_dir = Path(options.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {}
    mean_losses = []
    for epoch in range(1, options.epochs + 1):
        losses = train_one_epoch(model, optimizer, scheduler, loader, epoch, options.progress, options.max_steps)
        mean_losses.append(sum(losses) / len(losses))
        record = {"epoch": epoch, "loss": mean_losses[-1], **evaluate(model, val_set, options.batch_size)}
        logger.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"))
        with (work_dir / "metrics.jsonl").open("a") as out:
            out.write(json.dumps(record) + "\n")
    torch.save({"model": model.state_dict(), "options": {k: str(v) if isinstance(v, Path) else v
                                                         for k, v in asdict(options).items()},
                "num_classes": num_classes}, work_dir / "final.pth")
    draw_predictions(model, val_set, work_dir / "predictions.png")
    skipped = {"train": dict(train_set.skipped), "val": dict(val_set.skipped)}
    return {**record, "losses": mean_losses, "skipped": skipped, "seconds": time.perf_counter() - start}
