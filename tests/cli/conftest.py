import pytest
import torch

from davit.checkpoint.formats import from_davit
from davit.model import DaViTClassifier


@pytest.fixture(scope="package")
def tiny_mm_checkpoint(tmp_path_factory):
    """A random-weight tiny classifier saved in mmpretrain's layout."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-mm.pth"
    torch.save({"state_dict": from_davit(DaViTClassifier("tiny").state_dict(), "mmpretrain")}, path)
    return path
