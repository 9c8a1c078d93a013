"""ImageNet class names, image loading and DaViT's test-time preprocessing."""

from .classes import imagenet_classes, imagenet_synsets
from .datasets import (
    AnnotatedImageDataset,
    ClassFolderDataset,
    DatasetError,
    LabelledImageDataset,
    build_dataset,
)
from .images import ImageLoadError, ImageSource, load_image
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZED_PIXEL_BUDGET,
    TestTransform,
    build_test_transform,
    center_crop,
    preprocess,
    resize_short_edge,
    resized_size,
    short_edge_size,
    to_uint8_crop,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESIZED_PIXEL_BUDGET",
    "AnnotatedImageDataset",
    "ClassFolderDataset",
    "DatasetError",
    "ImageLoadError",
    "ImageSource",
    "LabelledImageDataset",
    "TestTransform",
    "build_dataset",
    "build_test_transform",
    "center_crop",
    "imagenet_classes",
    "imagenet_synsets",
    "load_image",
    "preprocess",
    "resize_short_edge",
    "resized_size",
    "short_edge_size",
    "to_uint8_crop",
]
