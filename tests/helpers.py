"""Helpers shared by tests of several modules."""
import contextlib
import json
from collections.abc import Iterator, Sequence

import torch

from davit.checkpoint.card import ModelCard, Preprocessing
from davit.model import ARCHS, DaViTClassifier


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """``count`` intra-op threads inside the block: tiny models on a busy 2-core machine run
    steadier with one than with two threads that wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def randomise_(model: torch.nn.Module, skip_prefix: str | None = None) -> torch.nn.Module:
    """Overwrite ``model``'s parameters in place with random values of a realistic scale (norm
    weights near 1, everything else small), so that parity tests compare more than defaults;
    parameters whose names start with ``skip_prefix`` are left alone."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if skip_prefix is not None and name.startswith(skip_prefix):
                continue
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    return model


# The mini architecture most tests build: every part of DaViT (four stages, both attentions) at a
# width that runs in milliseconds. Tests that need another shape say why beside their own.
MINI_ARCH = {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}
MINI_ARCH_JSON = json.dumps(MINI_ARCH)
# Florence-2's layout (channel attention v2, 3x3 downsampling, no padding to the stride) at that width.
MINI_FLORENCE2 = {**ARCHS["florence2-base"].to_dict(), **MINI_ARCH, "window_size": 4}


def tiny_classifier(classes: Sequence[str], preprocessing: Preprocessing | None = None, seed: int = 0,
                    spread: float = 1.0, arch: dict | None = None) -> DaViTClassifier:
    """A random classifier of ``arch`` (the mini one) in eval mode with a card naming ``classes``,
    as ``davit.get_model`` would give it; ``spread`` scales the classifier so that its top classes
    do not hang on a rounding."""
    torch.manual_seed(seed)
    model = DaViTClassifier(arch or MINI_ARCH, num_classes=len(classes)).eval()
    if spread != 1.0:
        with torch.no_grad():
            model.head.fc.weight.mul_(spread)
    model.card = ModelCard(model.arch, len(classes), tuple(classes), preprocessing or Preprocessing())
    model.class_names = list(classes)
    return model
