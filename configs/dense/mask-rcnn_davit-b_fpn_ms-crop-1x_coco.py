# DaViT-B Mask R-CNN, 1x schedule; drop path 0.2 is this library's choice (see the 3x config).
_base_ = './mask-rcnn_davit-t_fpn_ms-crop-1x_coco.py'

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.2,
                  init_cfg=dict(type='Pretrained', checkpoint='davit-base_msft_in1k')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
