"""Registers the dense DaViT backbone (type ``DavitToolkitDaViT``) in mmpretrain's ``MODELS``; a config
imports it with ``custom_imports = dict(imports=['davit.dense.mmpretrain_plugin'], allow_failed_imports=False)``."""
from .openmmlab import register_with

register_with("mmpretrain")
