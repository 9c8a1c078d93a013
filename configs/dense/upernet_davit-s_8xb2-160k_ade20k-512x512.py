# UperNet on DaViT-S, ADE20K 160k. The official repository publishes a DaViT-T config only;
# drop path 0.3 is kept from it (this library's choice).
_base_ = './upernet_davit-t_8xb2-160k_ade20k-512x512.py'

model = dict(
    backbone=dict(arch='small', init_cfg=dict(type='Pretrained', checkpoint='davit-small_msft_in1k')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
