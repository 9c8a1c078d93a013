import pytest
import torch
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet

from davit.dense import fasterrcnn, maskrcnn, retinanet
from davit.errors import InvalidArgumentError

MINI = {"embed_dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}
SIZE = {"min_size": 128, "max_size": 128}


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_maskrcnn_tiny_has_the_official_size():
    """The official DaViT-T Mask R-CNN has 47.8M parameters (mmdet: 80 classes + background)."""
    with torch.device("meta"):
        coco91, mmdet = maskrcnn("tiny", 91), maskrcnn("tiny", 81)
    assert isinstance(coco91, MaskRCNN)
    assert _count(coco91) == 47_924_593
    assert _count(mmdet) == 47_870_773
    assert abs(_count(coco91) / 47.8e6 - 1) < 0.01
    assert coco91.backbone.out_channels == 256
    assert [block[0].in_channels for block in coco91.backbone.fpn.inner_blocks] == [96, 192, 384, 768]


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images = [torch.rand(3, 128, 128), torch.rand(3, 96, 128)]
    masks = [torch.zeros(1, 128, 128, dtype=torch.uint8), torch.zeros(1, 96, 128, dtype=torch.uint8)]
    masks[0][:, 20:80, 10:60] = 1
    masks[1][:, 5:40, 5:50] = 1
    boxes = [torch.tensor([[10.0, 20.0, 60.0, 80.0]]), torch.tensor([[5.0, 5.0, 50.0, 40.0]])]
    targets = [{"boxes": b, "labels": torch.tensor([i + 1]), "masks": m}
               for i, (b, m) in enumerate(zip(boxes, masks))]
    return images, targets


@pytest.mark.parametrize(("build", "kind", "losses", "outputs"), [
    (maskrcnn, MaskRCNN, {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"},
     {"boxes", "labels", "scores", "masks"}),
    (fasterrcnn, FasterRCNN, {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
     {"boxes", "labels", "scores"}),
    (retinanet, RetinaNet, {"classification", "bbox_regression"}, {"boxes", "labels", "scores"}),
])
@pytest.mark.slow
def test_detector_trains_and_detects(build, kind, losses, outputs):
    torch.manual_seed(0)
    model = build(MINI, 3, frozen_stages=1, drop_path_rate=0.1, **SIZE)
    assert isinstance(model, kind)
    images, targets = _batch()
    model.train()
    loss = model(images, targets)
    assert set(loss) == losses
    sum(loss.values()).backward()
    body = model.backbone.body
    assert all(p.grad is None for p in body.stem.parameters())  # frozen
    assert all(p.grad is not None for p in body.stages[-1].parameters())
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and all(set(d) == outputs for d in detections)


def test_retinanet_uses_the_last_three_stages():
    with torch.device("meta"):
        model = retinanet("tiny", 91)
    fpn = model.backbone.fpn
    assert [block[0].in_channels for block in fpn.inner_blocks] == [192, 384, 768]
    assert fpn.extra_blocks.p6.in_channels == 768  # P6 from C5, mmdet's "on_input"


def test_narrow_fpn_and_mask_head_are_built_in():
    model = maskrcnn(MINI, 5, fpn_channels=32, mask_head_channels=(16, 8), **SIZE)
    assert model.backbone.out_channels == 32
    assert [block[0].out_channels for block in model.backbone.fpn.layer_blocks] == [32] * 4
    assert [layer[0].out_channels for layer in model.roi_heads.mask_head] == [16, 8]
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 5
    assert model.roi_heads.box_predictor.cls_score.out_features == 5
    assert model.rpn.head.conv[0][0].in_channels == 32
    images, targets = _batch()
    model.train()
    assert set(model(images, targets)) >= {"loss_mask", "loss_classifier"}
    with pytest.raises(InvalidArgumentError, match="mask_head_channels"):
        maskrcnn(MINI, 5, mask_head_channels=(), **SIZE)
    with pytest.raises(InvalidArgumentError, match="your own heads"):
        maskrcnn(MINI, 5, mask_head_channels=(8,), box_predictor=torch.nn.Identity(), **SIZE)


def test_out_indices_are_the_builders():
    with pytest.raises(InvalidArgumentError, match="out_indices"):
        maskrcnn(MINI, 3, out_indices=(3,))
