# DaViT-S Mask R-CNN, 3x schedule. The official repository publishes DaViT-T configs only:
# the drop path rate here (0.2) is this library's choice, not a published number.
_base_ = './mask-rcnn_davit-t_fpn_ms-crop-3x_coco.py'

model = dict(
    backbone=dict(arch='small', drop_path_rate=0.2,
                  init_cfg=dict(type='Pretrained', checkpoint='davit-small_msft_in1k')),
    neck=dict(in_channels=[96, 192, 384, 768]))
