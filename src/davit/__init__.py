"""DaViT: Dual Attention Vision Transformers."""
from .api import get_model, inference_model
from .checkpoint.card import ModelCard, Preprocessing
from .checkpoint.pretrained import push_to_hub, save_pretrained
from .engine.embed import embed_images
from .kernels import fast_kernels, fast_kernels_enabled
from .model import ARCHS, DaViT, DaViTArch, DaViTClassifier, Florence2Encoder
from .resolve import ModelRef, resolve_model, resolve_weights
from .zoo import list_models

__version__ = "0.2.0"
__all__ = [
           "ARCHS",
           "DaViT",
           "DaViTArch",
           "DaViTClassifier",
           "Florence2Encoder",
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
           "resolve_model",
           "resolve_weights",
           "save_pretrained",
]
