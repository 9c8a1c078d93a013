# DaViT-T on ImageNet-1k: 4 GPUs x 256 images, AdamW, 300 epochs.
_base_ = [
    '../_base_/models/davit/davit-tiny.py',
    '../_base_/datasets/imagenet_bs256_davit_224.py',
    '../_base_/schedules/imagenet_bs1024_adamw_swin.py',
    '../_base_/default_runtime.py',
]

# Evaluate with mmpretrain's port semantics, so that this config gives the numbers mmpretrain's
# tools/test.py gives for the same weights. `--semantics official` (or
# `--cfg-options model.semantics=official`) evaluates the official DaViT instead.
model = dict(semantics='mmpretrain')
