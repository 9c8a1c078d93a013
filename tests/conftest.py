import pytest
import torch

from tests.paths import FIXTURES

try:  # the tests never send OpenVINO's usage telemetry
    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
except ImportError:
    pass
else:
    # Without a consent file OpenVINO's converter sends telemetry from a forked process; forked from
    # this multi-threaded one with no network, it can hang in getaddrinfo and pytest waits for it at
    # exit. Declining consent here is what `opt_in_out --opt_out` writes to ~/intel for a user.
    OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED


@pytest.fixture(scope="session")
def golden() -> dict:
    return torch.load(FIXTURES / "davit-mini-golden.pt", weights_only=True)


@pytest.fixture(scope="session")
def golden_arch(golden) -> tuple[dict, int]:
    arch = dict(golden["arch"])
    return arch, arch.pop("num_classes")
