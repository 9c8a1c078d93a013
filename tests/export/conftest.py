import pytest
import torch

from davit.checkpoint.card import ModelCard, Preprocessing
from davit.model import DaViTClassifier
from tests.paths import REPO

TINY_ARCH = {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}
CLASSES = tuple(f"class {i}" for i in range(10))
PHOTOS = sorted((REPO / "demo").glob("*.jpg"))


@pytest.fixture(scope="package")
def tiny_classifier():
    """A random tiny classifier with a card (73 -> 64 bicubic, ten named classes) whose logits are
    spread wide enough that its top-5 on a photo does not hang on a rounding."""
    torch.manual_seed(0)
    model = DaViTClassifier(TINY_ARCH, num_classes=len(CLASSES)).eval()
    with torch.no_grad():
        model.head.fc.weight.mul_(200)
    model.card = ModelCard(model.arch, len(CLASSES), CLASSES, Preprocessing(73, 64, "bicubic"))
    model.class_names = list(CLASSES)
    return model


@pytest.fixture(scope="package")
def pixels_plan(tiny_classifier):
    """The tiny classifier with its preprocessing, planned (and traced) once for every format."""
    from davit.export import plan_export

    return plan_export(tiny_classifier, with_preprocessing=True, check_images=PHOTOS[:1])
