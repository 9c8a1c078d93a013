# DaViT-S Mask R-CNN, 1x schedule; drop path 0.1 is this library's choice (see the 3x config).
_base_ = './mask-rcnn_davit-t_fpn_ms-crop-1x_coco.py'

model = dict(
    backbone=dict(arch='small', drop_path_rate=0.1,
                  init_cfg=dict(type='Pretrained', checkpoint='davit-small_msft_in1k')),
    neck=dict(in_channels=[96, 192, 384, 768]))
