import pytest
import torch

from tests.paths import FIXTURES


@pytest.fixture(scope="session")
def golden() -> dict:
    return torch.load(FIXTURES / "davit-mini-golden.pt", weights_only=True)


@pytest.fixture(scope="session")
def golden_arch(golden) -> tuple[dict, int]:
    arch = dict(golden["arch"])
    return arch, arch.pop("num_classes")
