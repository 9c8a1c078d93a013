"""The check every export goes through: run the written file on the plan's inputs (random batches
and real images) and refuse it when it differs from PyTorch by more than the tolerance."""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from ..errors import ExportError
from .plan import ExportPlan

logger = logging.getLogger("davit")

Runner = Callable[[np.ndarray], np.ndarray]  # the exported model: input array -> output array


def verify_export(plan: ExportPlan, run: Runner, runtime: str, atol: float = 1e-4) -> float:
    """Compare ``run`` (the exported model on ``runtime``) with the plan's PyTorch module on every
    check input; a difference over ``atol`` x the largest output value raises
    :class:`ExportError`. Returns the largest relative difference seen."""
    worst = 0.0
    for what, example in plan.checks:
        got = run(example.numpy())
        with torch.no_grad():
            expected = plan.module(example).numpy()
        if got.shape != expected.shape:
            raise ExportError(f"{runtime}'s output for {what} has shape {got.shape}, PyTorch's "
                              f"{expected.shape}; the export is not usable")
        error = float(np.abs(got.astype(np.float64) - expected).max())
        scale = max(float(np.abs(expected).max()), 1e-6)
        if error > atol * scale:
            raise ExportError(f"{runtime}'s output for {what} differs from PyTorch's by {error:.3g} "
                              f"(largest value {scale:.3g}, tolerance {atol:g} of it); the export is "
                              "not usable")
        logger.debug("%s matches PyTorch on %s: max difference %.2g (largest value %.3g)",
                     runtime, what, error, scale)
        worst = max(worst, error / scale)
    logger.info("%s matches PyTorch on %d inputs (%s): largest difference %.2g of the largest output",
                runtime, len(plan.checks), ", ".join(what for what, _ in plan.checks), worst)
    return worst
