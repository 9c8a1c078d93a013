"""Object detection and instance segmentation with a DaViT + FPN backbone, built by torchvision.

torchvision's detectors take any module with an ``out_channels`` attribute whose forward returns an
ordered dict of equally wide maps; :class:`DaViTFPN` is that module: the dense DaViT backbone and
torchvision's :class:`FeaturePyramidNetwork` (256 channels, as the official DaViT detection
configs). Anchors, ROI heads, losses and post-processing are torchvision's defaults.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    LastLevelMaxPool,
    LastLevelP6P7,
)

from ..errors import InvalidArgumentError
from ..resolve import ModelSource
from .backbone import backbone

FPN_CHANNELS = 256
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
             **options: Any) -> MaskRCNN:
    """torchvision's Mask R-CNN on DaViT + FPN (P2-P6), as the official DaViT COCO models.

    Args:
        arch: what :func:`davit.dense.backbone` takes: a zoo or architecture name (``tiny``) or a
            checkpoint.
        num_classes: detector classes, background included (91 for torchvision's COCO labels).
        backbone_weights: the backbone's ``pretrained`` (None or False: random; True: the
            name's published weights; or a checkpoint).
        options: ``frozen_stages``, ``drop_path_rate``, ``grad_checkpointing`` for the backbone;
            the rest for :class:`MaskRCNN` (``min_size``, ``max_size``, ``box_detections_per_img`` ...).
    """
    body_options, model_options = _split(options)
    return MaskRCNN(_rcnn_backbone(arch, backbone_weights, body_options), num_classes=num_classes,
                    **model_options)


def fasterrcnn(arch: ModelSource, num_classes: int, backbone_weights: BackboneWeights = None,
               **options: Any) -> FasterRCNN:
    """torchvision's Faster R-CNN on DaViT + FPN (P2-P6); arguments as :func:`maskrcnn`."""
    body_options, model_options = _split(options)
    return FasterRCNN(_rcnn_backbone(arch, backbone_weights, body_options), num_classes=num_classes,
                      **model_options)


def retinanet(arch: ModelSource, num_classes: int, backbone_weights: BackboneWeights = None,
              **options: Any) -> RetinaNet:
    """torchvision's RetinaNet on DaViT + FPN (P3-P7, P6 from the last stage's output as mmdet's
    ``add_extra_convs="on_input"``); arguments as :func:`maskrcnn` (RetinaNet has no background
    class: 80 or 91 for COCO)."""
    body_options, model_options = _split(options)
    body = backbone(arch, pretrained=backbone_weights, out_indices=(1, 2, 3), **body_options)
    extra = LastLevelP6P7(body.out_channels[-1], FPN_CHANNELS)
    return RetinaNet(DaViTFPN(body, body.out_channels, extra), num_classes=num_classes, **model_options)


def _rcnn_backbone(arch: ModelSource, weights: BackboneWeights, options: dict[str, Any]) -> DaViTFPN:
    """All four stages into the FPN, with a max-pooled fifth level for the RPN (P2-P6)."""
    body = backbone(arch, pretrained=weights, out_indices=(0, 1, 2, 3), **options)
    return DaViTFPN(body, body.out_channels, LastLevelMaxPool())


def _split(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The backbone's options and torchvision's; ``backbone`` options are the builder's own."""
    if "out_indices" in options:
        raise InvalidArgumentError("the detectors choose the backbone's out_indices themselves "
                                   "(all four stages for the R-CNNs, the last three for RetinaNet)")
    body = {key: value for key, value in options.items() if key in BACKBONE_OPTIONS}
    return body, {key: value for key, value in options.items() if key not in BACKBONE_OPTIONS}

