import pytest

from davit.checkpoint.card import Preprocessing
from tests.helpers import MINI_ARCH
from tests.helpers import tiny_classifier as build_tiny_classifier
from tests.paths import REPO

TINY_ARCH = MINI_ARCH
CLASSES = tuple(f"class {i}" for i in range(10))
PHOTOS = sorted((REPO / "demo").glob("*.jpg"))


@pytest.fixture(scope="package")
def tiny_classifier():
    """A random tiny classifier with a card (73 -> 64 bicubic, ten named classes) whose logits are
    spread wide enough that its top-5 on a photo does not hang on a rounding."""
    return build_tiny_classifier(CLASSES, Preprocessing(73, 64, "bicubic"), spread=200)


@pytest.fixture(scope="package")
def pixels_plan(tiny_classifier):
    """The tiny classifier with its preprocessing, planned (and traced) once for every format."""
    from davit.export import plan_export

    return plan_export(tiny_classifier, with_preprocessing=True, check_images=PHOTOS[:1])
