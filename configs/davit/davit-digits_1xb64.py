# A small DaViT trained from scratch on scikit-learn's digits: 1,797 8x8 scans of handwritten
# digits, upscaled to 32x32 PNGs in class sub-folders, which `python tools/prepare_digits.py` writes
# to data/digits/{train,test}. One process, 64 images per step; a CPU check that the recipe learns.
# Digits call for their own augmentation: no 224px crops, no flips (a flipped 2 is no digit),
# only small shifts.
_base_ = ['../_base_/default_runtime.py']

model = dict(
    type='ImageClassifier',
    semantics='official',
    backbone=dict(
        type='DaViT',
        arch=dict(embed_dims=[32, 64, 128, 256], depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8],
                  window_size=4),
        drop_path_rate=0.0,
    ),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=256,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, 5),
    ),
)

# White strokes on black, on a 0-255 scale.
data_preprocessor = dict(num_classes=10, mean=[64.0, 64.0, 64.0], std=[96.0, 96.0, 96.0], to_rgb=True)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomCrop', crop_size=32, padding=3, pad_val=0),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=32, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=32),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    dataset=dict(type='CustomDataset', data_root='data/digits/train', pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)
val_dataloader = dict(
    batch_size=256,
    num_workers=0,
    dataset=dict(type='CustomDataset', data_root='data/digits/test', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
)
# One warm-up epoch, then cosine decay.
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=15, val_interval=1)
auto_scale_lr = dict(base_batch_size=64)

default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=0, save_best='auto'),
    logger=dict(type='LoggerHook', interval=10),
)
randomness = dict(seed=0, deterministic=False)
