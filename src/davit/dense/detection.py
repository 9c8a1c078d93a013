"""Object detection and instance segmentation with a DaViT + FPN backbone, built by torchvision.

torchvision's detectors take any module with an ``out_channels`` attribute whose forward returns an
ordered dict of equally wide maps; :class:`DaViTFPN` is that module: the dense DaViT backbone and
torchvision's :class:`FeaturePyramidNetwork` (256 channels by default, as the official DaViT
detection configs; narrower ones for small data on a CPU). Anchors, ROI heads, losses and
post-processing are torchvision's defaults unless the builders' options say otherwise.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    LastLevelMaxPool,
    LastLevelP6P7,
)

from ..checkpoint.resolve import ModelSource
from ..errors import InvalidArgumentError
from .backbone import backbone

FPN_CHANNELS = 256
BOX_REPRESENTATION = 1024  # the width of torchvision's default box head (TwoMLPHead)
BACKBONE_OPTIONS = ("frozen_stages", "drop_path_rate", "grad_checkpointing")
"""Keyword options of the builders that go to the DaViT backbone; the others go to torchvision."""

BackboneWeights = bool | str | Path | None


class DaViTFPN(nn.Module):
    """A dense DaViT backbone (stage outputs as a tuple of NCHW maps) followed by an FPN.

    ``extra_blocks`` adds the coarser levels: :class:`LastLevelMaxPool` for the R-CNNs (P2-P6),
    :class:`LastLevelP6P7` for RetinaNet (P3-P7). The maps are keyed ``"0"``, ``"1"``, ... as
    torchvision's ROI poolers expect.
    """

    def __init__(self, body: nn.Module, in_channels: Sequence[int], extra_blocks: ExtraFPNBlock,
                 out_channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = OrderedDict((str(i), feature) for i, feature in enumerate(self.body(x)))
        return self.fpn(features)


def maskrcnn(arch: ModelSource, num_classes: int, backbone_weights: BackboneWeights = None,
             fpn_channels: int = FPN_CHANNELS, mask_head_channels: Sequence[int] | None = None,
             **options: Any) -> MaskRCNN:
    """torchvision's Mask R-CNN on DaViT + FPN (P2-P6), as the official DaViT COCO models.

    Args:
        arch: what :func:`davit.dense.backbone` takes: a zoo or architecture name (``tiny``) or a
            checkpoint.
        num_classes: detector classes, background included (91 for torchvision's COCO labels).
        backbone_weights: the backbone's ``pretrained`` (None or False: random; True: the
            name's published weights; or a checkpoint).
        fpn_channels: the FPN's width, and so the RPN's and the ROI heads' input width.
        mask_head_channels: the widths of the mask head's 3x3 convolutions (None: torchvision's
            four of 256); narrower heads train several times faster on a CPU.
        options: ``frozen_stages``, ``drop_path_rate``, ``grad_checkpointing`` for the backbone;
            the rest for :class:`MaskRCNN` (``min_size``, ``max_size``, ``rpn_anchor_generator``,
            ``box_detections_per_img`` ...).
    """
    body_options, model_options = _split(options)
    body = _rcnn_backbone(arch, backbone_weights, body_options, fpn_channels)
    if mask_head_channels is None:
        return MaskRCNN(body, num_classes=num_classes, **model_options)
    widths = list(mask_head_channels)
    if not widths or min(widths) < 1:
        raise InvalidArgumentError(f"mask_head_channels must be one or more positive widths, got {widths}")
    if {"mask_head", "mask_predictor", "box_head", "box_predictor"} & set(model_options):
        raise InvalidArgumentError("mask_head_channels builds the mask head and both predictors itself; "
                                   "pass either it or your own heads")
    # torchvision takes its own mask predictor only without num_classes, so both predictors are built here
    return MaskRCNN(body, num_classes=None, mask_head=MaskRCNNHeads(fpn_channels, widths, 1),
                    mask_predictor=MaskRCNNPredictor(widths[-1], widths[-1], num_classes),
                    box_predictor=FastRCNNPredictor(BOX_REPRESENTATION, num_classes), **model_options)


def fasterrcnn(arch: ModelSource, num_classes: int, backbone_weights: BackboneWeights = None,
               fpn_channels: int = FPN_CHANNELS, **options: Any) -> FasterRCNN:
    """torchvision's Faster R-CNN on DaViT + FPN (P2-P6); arguments as :func:`maskrcnn`."""
    body_options, model_options = _split(options)
    return FasterRCNN(_rcnn_backbone(arch, backbone_weights, body_options, fpn_channels), num_classes=num_classes,
                      **model_options)


def retinanet(arch: ModelSource, num_classes: int, backbone_weights: BackboneWeights = None,
              fpn_channels: int = FPN_CHANNELS, **options: Any) -> RetinaNet:
    """torchvision's RetinaNet on DaViT + FPN (P3-P7, P6 from the last stage's output as mmdet's
    ``add_extra_convs="on_input"``); arguments as :func:`maskrcnn` (RetinaNet has no background
    class: 80 or 91 for COCO)."""
    body_options, model_options = _split(options)
    body = backbone(arch, pretrained=backbone_weights, out_indices=(1, 2, 3), **body_options)
    extra = LastLevelP6P7(body.out_channels[-1], fpn_channels)
    return RetinaNet(DaViTFPN(body, body.out_channels, extra, fpn_channels), num_classes=num_classes,
                     **model_options)


def _rcnn_backbone(arch: ModelSource, weights: BackboneWeights, options: dict[str, Any],
                   fpn_channels: int) -> DaViTFPN:
    """All four stages into the FPN, with a max-pooled fifth level for the RPN (P2-P6)."""
    body = backbone(arch, pretrained=weights, out_indices=(0, 1, 2, 3), **options)
    return DaViTFPN(body, body.out_channels, LastLevelMaxPool(), fpn_channels)


def _split(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The backbone's options and torchvision's; ``backbone`` options are the builder's own."""
    if "out_indices" in options:
        raise InvalidArgumentError("the detectors choose the backbone's out_indices themselves "
                                   "(all four stages for the R-CNNs, the last three for RetinaNet)")
    body = {key: value for key, value in options.items() if key in BACKBONE_OPTIONS}
    return body, {key: value for key, value in options.items() if key not in BACKBONE_OPTIONS}

