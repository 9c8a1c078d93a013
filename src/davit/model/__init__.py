from .archs import ARCHS, SEMANTICS, SEMANTICS_TABLE, DaViTArch, Semantics, resolve_arch, resolve_semantics
from .backbone import DaViT
from .base import DaViTModel
from .classifier import DaViTClassifier
from .factory import build_model
from .florence2 import Florence2Encoder, Florence2Projector, is_florence2
from .head import ClassifierHead

__all__ = ["ARCHS", "SEMANTICS", "SEMANTICS_TABLE", "ClassifierHead", "DaViT", "DaViTArch", "DaViTClassifier",
           "DaViTModel", "Florence2Encoder", "Florence2Projector", "Semantics", "build_model", "is_florence2",
           "resolve_arch", "resolve_semantics"]
