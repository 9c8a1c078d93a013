from .archs import ARCHS, DaViTArch, resolve_arch
from .backbone import DaViT, SEMANTICS
from .classifier import ClassifierHead, DaViTClassifier

__all__ = ["ARCHS", "DaViTArch", "resolve_arch", "DaViT", "SEMANTICS", "ClassifierHead",
           "DaViTClassifier"]
