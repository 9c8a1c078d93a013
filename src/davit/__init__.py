"""DaViT: Dual Attention Vision Transformers."""
from .api import get_model, inference_model
from .kernels import fast_kernels, fast_kernels_enabled
from .model import ARCHS, DaViT, DaViTArch, DaViTClassifier
from .resolve import ModelRef, resolve_model, resolve_weights
from .zoo import list_models

__version__ = "0.2.0"
__all__ = [
           "ARCHS",
           "DaViT",
           "DaViTArch",
           "DaViTClassifier",
           "ModelRef",
           "__version__",
           "fast_kernels",
           "fast_kernels_enabled",
           "get_model",
           "inference_model",
           "list_models",
           "resolve_model",
           "resolve_weights",
]
