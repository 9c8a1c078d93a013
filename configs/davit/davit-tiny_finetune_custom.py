# Fine-tune ImageNet-1k DaViT-T on your own images: a folder of class sub-folders.
#
#   data/custom/train/<class name>/<image>   training images
#   data/custom/val/<class name>/<image>     validation images (the same class folders)
#
# Labels follow the sorted folder names. The class count comes from the training folders
# (num_classes=None); the ImageNet classifier is replaced by a freshly initialised one.
#   python tools/train.py configs/davit/davit-tiny_finetune_custom.py
_base_ = ['./davit-tiny_4xb256_in1k.py']

# A path, URL, hf-hub: name or model name (davit list --pretrained).
load_from = 'davit-tiny_3rdparty_in1k'

model = dict(
    # The official numerics, which the published weights were trained with.
    semantics='official',
    # frozen_stages=k keeps the stem and the first k stages (0-4) fixed; 4 trains the head only.
    backbone=dict(drop_path_rate=0.1, frozen_stages=-1),
    head=dict(num_classes=None),
    # The recipe's Mixup/CutMix slow down short fine-tuning runs on small datasets.
    train_cfg=dict(augments=[]),
)

# The recipe's pipelines (224px crops, flip, RandAugment, RandomErasing; resize 236, crop 224)
# are kept; the ImageNet-only keys (split, ann_file, data_prefix) are emptied.
train_dataloader = dict(
    batch_size=32,
    num_workers=4,
    dataset=dict(type='CustomDataset', data_root='data/custom/train', split=''),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=4,
    dataset=dict(type='CustomDataset', data_root='data/custom/val', split='', ann_file='',
                 data_prefix=''),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

# AdamW at 1e-4 for 64 images per step (scaled to the real total batch), 2 warm-up epochs,
# cosine decay over 30 epochs.
optim_wrapper = dict(optimizer=dict(lr=1e-4), clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, end=2, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=2, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=30)
auto_scale_lr = dict(base_batch_size=64)
default_hooks = dict(logger=dict(interval=10))
