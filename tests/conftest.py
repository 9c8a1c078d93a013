from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def golden() -> dict:
    return torch.load(FIXTURES / "davit-mini-golden.pt", weights_only=True)


@pytest.fixture(scope="session")
def golden_arch(golden) -> tuple[dict, int]:
    arch = dict(golden["arch"])
    return arch, arch.pop("num_classes")
