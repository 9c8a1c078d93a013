"""DaViT for dense prediction: the backbone, torchvision detectors and smp segmentation models.

Importing this package registers the DaViT encoders with segmentation_models_pytorch when it is
installed; detection needs only torchvision.
"""
from contextlib import suppress

from ..errors import MissingDependencyError
from .backbone import DenseBackbone, backbone, save_backbone
from .detection import DaViTFPN, fasterrcnn, maskrcnn, retinanet
from .segmentation import ENCODERS, DaViTEncoder, register_encoder, register_encoders, segmentation_model

with suppress(MissingDependencyError):
    register_encoders()

__all__ = [
    "ENCODERS",
    "DaViTEncoder",
    "DaViTFPN",
    "DenseBackbone",
    "backbone",
    "fasterrcnn",
    "maskrcnn",
    "register_encoder",
    "register_encoders",
    "retinanet",
    "save_backbone",
    "segmentation_model",
]
