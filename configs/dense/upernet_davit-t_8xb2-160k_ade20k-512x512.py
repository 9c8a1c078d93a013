# UperNet on DaViT-T, ADE20K (150 classes), 512x512 crops, 160k iterations, mmseg 1.x. The
# `mmseg::` base files come from the mmsegmentation install, not from this repository.
# Numbers from the official DaViT segmentation config (github.com/dingmyu/davit, mmseg/configs/
# upernet_davit_512x512_160k_ade20k.py): AdamW lr 6e-5, betas (0.9, 0.999), weight decay 0.01,
# linear warm-up 1500 iterations then poly (power 1), drop path 0.3; 8 GPUs x 2 images. The base
# Swin config brings the same dataset, schedule and heads.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['davit.dense.mmseg_plugin'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='DavitToolkitDaViT',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='davit-tiny_msft_in1k')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01))
