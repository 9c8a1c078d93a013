import pytest
import torch

from davit.checkpoint.card import ModelCard, Preprocessing
from davit.model import DaViTClassifier
from tests.helpers import randomise_, torch_threads

# Two blocks in stage 1 and a window of 3 that does not divide the 8x8 grid of stage 1 on a 64
# crop, so that the window attention pads.
TINY_ARCH = {"embed_dims": [8, 16, 32, 64], "depths": [1, 2, 1, 1], "num_heads": [1, 2, 4, 8], "window_size": 3}
PREPROCESSING = Preprocessing(resize_edge=72, crop_size=64)
CLASSES = ("ant", "bee", "cat", "dog", "eel")


def tiny_model(channel_attention: str = "davit") -> DaViTClassifier:
    """A 5-class tiny classifier with random weights of a realistic scale (so that attention and
    class scores are not uniform) and a card of 64-pixel crops."""
    torch.manual_seed(0)
    arch = {**TINY_ARCH, "channel_attention": channel_attention}
    model = randomise_(DaViTClassifier(arch, num_classes=len(CLASSES))).eval()
    model.card = ModelCard(model.arch, len(CLASSES), CLASSES, PREPROCESSING)
    model.class_names = list(CLASSES)
    return model


@pytest.fixture(scope="package")
def model() -> DaViTClassifier:
    return tiny_model()


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield
