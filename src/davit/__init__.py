"""DaViT: Dual Attention Vision Transformers.

The names below are loaded on first use (PEP 562), so ``import davit.model`` or ``import
davit.errors`` costs only what those modules need, not the whole toolkit.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "get_model": "davit.checkpoint.build",
    "inference_model": "davit.api",
    "ModelCard": "davit.checkpoint.card",
    "Preprocessing": "davit.checkpoint.card",
    "push_to_hub": "davit.checkpoint.pretrained",
    "save_pretrained": "davit.checkpoint.pretrained",
    "embed_images": "davit.engine.embed",
    "read_embedding_shards": "davit.engine.embed_shards",
    "ImageIndex": "davit.search",
    "fast_kernels": "davit.kernels",
    "fast_kernels_enabled": "davit.kernels",
    "ARCHS": "davit.model",
    "DaViT": "davit.model",
    "DaViTArch": "davit.model",
    "DaViTClassifier": "davit.model",
    "DaViTModel": "davit.model",
    "Florence2Encoder": "davit.model",
    "ModelRef": "davit.checkpoint.resolve",
    "resolve_model": "davit.checkpoint.resolve",
    "resolve_weights": "davit.checkpoint.resolve",
    "list_models": "davit.zoo",
}

if TYPE_CHECKING:
    from .api import inference_model
    from .checkpoint.build import get_model
    from .checkpoint.card import ModelCard, Preprocessing
    from .checkpoint.pretrained import push_to_hub, save_pretrained
    from .checkpoint.resolve import ModelRef, resolve_model, resolve_weights
    from .engine.embed import embed_images
    from .engine.embed_shards import read_embedding_shards
    from .kernels import fast_kernels, fast_kernels_enabled
    from .model import ARCHS, DaViT, DaViTArch, DaViTClassifier, DaViTModel, Florence2Encoder
    from .search import ImageIndex
    from .zoo import list_models

__all__ = [
    "ARCHS",
    "DaViT",
    "DaViTArch",
    "DaViTClassifier",
    "DaViTModel",
    "Florence2Encoder",
    "ImageIndex",
    "ModelCard",
    "ModelRef",
    "Preprocessing",
    "__version__",
    "embed_images",
    "fast_kernels",
    "fast_kernels_enabled",
    "get_model",
    "inference_model",
    "list_models",
    "push_to_hub",
    "read_embedding_shards",
    "resolve_model",
    "resolve_weights",
    "save_pretrained",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'davit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
