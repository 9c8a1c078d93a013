"""DaViT: Dual Attention Vision Transformers."""
from .api import get_model, inference_model
from .model import ARCHS, DaViT, DaViTArch, DaViTClassifier
from .zoo import list_models

__version__ = "0.1.0"
__all__ = ["get_model", "inference_model", "list_models", "DaViT", "DaViTClassifier",
           "DaViTArch", "ARCHS", "__version__"]
