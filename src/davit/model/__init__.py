from .archs import ARCHS, SEMANTICS, SEMANTICS_TABLE, DaViTArch, Semantics, resolve_arch, resolve_semantics
from .backbone import DaViT
from .classifier import ClassifierHead, DaViTClassifier
from .factory import build_model
from .florence2 import Florence2Encoder, Florence2Projector, is_florence2

__all__ = ["ARCHS", "SEMANTICS", "SEMANTICS_TABLE", "ClassifierHead", "DaViT", "DaViTArch", "DaViTClassifier",
           "Florence2Encoder", "Florence2Projector", "Semantics", "build_model", "is_florence2", "resolve_arch",
           "resolve_semantics"]
