"""Helpers shared by tests of several modules."""
import contextlib
from collections.abc import Iterator

import torch


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
