# Mask R-CNN + FPN on DaViT-T, COCO instance segmentation, 3x schedule (36 epochs) with the
# multi-scale + crop training pipeline, mmdet 3.x. The `mmdet::` base files come from the mmdet
# install (its package's .mim/configs), not from this repository.
# Numbers from the official DaViT detection config (github.com/dingmyu/davit, mmdet/configs/
# davit_maskrcnn_3x_coco.py): AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05, no
# paramwise rules, drop path 0.2, steps at epochs 27 and 33; 8 GPUs x 2 images.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'

custom_imports = dict(imports=['davit.dense.mmdet_plugin'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='DavitToolkitDaViT',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        # any weights source davit reads: a zoo name, a path, a URL or hf-hub:
        init_cfg=dict(type='Pretrained', checkpoint='davit-tiny_msft_in1k')),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05))
