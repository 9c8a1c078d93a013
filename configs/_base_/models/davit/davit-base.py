# DaViT-B ImageNet-1k classifier.
# semantics: 'official' (the DaViT release's numerics) or 'mmpretrain' (mmpretrain's port).
model = dict(
    type='ImageClassifier',
    semantics='official',
    backbone=dict(type='DaViT', arch='base', out_indices=(3, ), drop_path_rate=0.4),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=1024,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, 5),
    ),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)
