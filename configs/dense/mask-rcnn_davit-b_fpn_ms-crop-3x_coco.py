# DaViT-B Mask R-CNN, 3x schedule. The official repository publishes DaViT-T configs only:
# the drop path rate here (0.3) is this library's choice, not a published number.
_base_ = './mask-rcnn_davit-t_fpn_ms-crop-3x_coco.py'

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint='davit-base_msft_in1k')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
