"""The dynamic batcher on its own: batch sizes, waiting, order of answers, failures, cancellation."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from davit.serve.batching import DynamicBatcher


def run_recording(sizes: list[int]):
    def run(batch: torch.Tensor) -> np.ndarray:
        sizes.append(len(batch))
        return batch.flatten(1).sum(1).numpy()  # each image's own answer
    return run


def test_batches_fill_up_to_the_limit_and_each_image_gets_its_own_row():
    sizes: list[int] = []

    async def scenario() -> list[float]:
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(run_recording(sizes), executor, max_batch_size=4, max_wait_s=0.2)
            batcher.start()
            rows = await asyncio.gather(*(batcher.submit(torch.full((3, 2, 2), float(i))) for i in range(10)))
            await batcher.stop()
        return [float(row) for row in rows]

    assert asyncio.run(scenario()) == [12.0 * i for i in range(10)]
    assert sizes == [4, 4, 2]


def test_a_lone_image_waits_at_most_max_wait():
    sizes: list[int] = []

    async def scenario() -> float:
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(run_recording(sizes), executor, max_batch_size=8, max_wait_s=0.05)
            batcher.start()
            started = time.monotonic()
            await batcher.submit(torch.zeros(3, 2, 2))
            waited = time.monotonic() - started
            await batcher.stop()
        return waited

    assert 0.04 <= asyncio.run(scenario()) < 1.0 and sizes == [1]


def test_a_failing_batch_fails_its_images_only_and_cancelled_images_are_left_out():
    sizes: list[int] = []

    def run(batch: torch.Tensor) -> np.ndarray:
        sizes.append(len(batch))
        if (batch < 0).any():
            raise RuntimeError("bad batch")
        return batch.flatten(1).sum(1).numpy()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(run, executor, max_batch_size=2, max_wait_s=0.05)
            batcher.start()
            failing = asyncio.gather(batcher.submit(-torch.ones(3, 1, 1)), batcher.submit(torch.ones(3, 1, 1)))
            with pytest.raises(RuntimeError, match="bad batch"):
                await failing
            gone = asyncio.ensure_future(batcher.submit(torch.ones(3, 1, 1)))
            await asyncio.sleep(0)
            gone.cancel()  # its request went away before the batch started
            assert float(await batcher.submit(torch.ones(3, 1, 1))) == 3.0
            await batcher.stop()

    asyncio.run(scenario())
    assert sizes == [2, 1]
