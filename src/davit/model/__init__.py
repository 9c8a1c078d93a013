from .archs import ARCHS, SEMANTICS, SEMANTICS_TABLE, DaViTArch, Semantics, resolve_arch, resolve_semantics
from .backbone import DaViT
from .classifier import ClassifierHead, DaViTClassifier

__all__ = ["ARCHS", "SEMANTICS", "SEMANTICS_TABLE", "ClassifierHead", "DaViT", "DaViTArch", "DaViTClassifier",
           "Semantics", "resolve_arch", "resolve_semantics"]
