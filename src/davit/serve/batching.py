"""Dynamic batching: images of concurrent requests gathered into one model run, answered one by one.

Each image waits at most ``max_wait_s`` after the oldest waiting image arrived, or until
``max_batch_size`` images are waiting, whichever comes first. The model runs in a worker thread
(shared by every batcher of the app, so that runs never compete for the cores), which keeps the
event loop free: health checks and uploads are answered while a batch computes. Images whose
request has gone (timed out, disconnected) before their batch starts are left out of it.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..errors import InvalidArgumentError

RunBatch = Callable[[Tensor], np.ndarray]  # (N, 3, H, W) -> N rows of output


@dataclass
class _Waiting:
    tensor: Tensor
    future: asyncio.Future[np.ndarray]
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Gathers single images into batches for ``run`` (called in ``executor``); ``on_batch(size,
    seconds)`` is told of each run. :meth:`start` and :meth:`submit` must be called on the event
    loop that serves the requests."""

    def __init__(self, run: RunBatch, executor: Executor, max_batch_size: int, max_wait_s: float,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch_size < 1 or max_wait_s < 0:
            raise InvalidArgumentError(f"max_batch_size must be positive and max_wait non-negative, got "
                                       f"{max_batch_size} and {max_wait_s}")
        self.run = run
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._waiting: deque[_Waiting] = deque()
        self._arrival = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve_forever())

    async def stop(self) -> None:
        """Stop gathering (after the server has answered every accepted request)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def submit(self, tensor: Tensor) -> np.ndarray:
        """The model's output row for one preprocessed image (3, H, W)."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(tensor, future))
        self._arrival.set()
        return await future

    async def _serve_forever(self) -> None:
        while True:
            batch = await self._gather()
            if batch:
                await self._run(batch)

    async def _gather(self) -> list[_Waiting]:
        """The next batch: waits for a first image, then for more until full or out of time."""
        while not self._waiting:
            self._arrival.clear()
            await self._arrival.wait()
        deadline = self._waiting[0].arrived + self.max_wait_s
        while len(self._waiting) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except TimeoutError:
                break
        taken = [self._waiting.popleft() for _ in range(min(self.max_batch_size, len(self._waiting)))]
        return [item for item in taken if not item.future.done()]  # done: its request went away

    def _stack_and_run(self, tensors: list[Tensor]) -> np.ndarray:
        """The model on the stacked images, both on the executor's thread: a tensor operation on the
        event loop's thread would give that thread an OpenMP team of its own, which made every batch
        up to 2x slower (:func:`davit.serve.app.model_thread`)."""
        return self.run(torch.stack(tensors))

    async def _run(self, batch: list[_Waiting]) -> None:
        """Run the model on ``batch`` (one run per image size) and answer each image."""
        by_shape: dict[tuple[int, ...], list[_Waiting]] = {}
        for item in batch:
            by_shape.setdefault(tuple(item.tensor.shape), []).append(item)
        loop = asyncio.get_running_loop()
        for group in by_shape.values():
            started = time.perf_counter()
            try:
                rows = await loop.run_in_executor(self.executor, self._stack_and_run, [item.tensor for item in group])
            except Exception as error:  # the requests answer 500; the batcher goes on
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            if self.on_batch is not None:
                self.on_batch(len(group), time.perf_counter() - started)
            for item, row in zip(group, rows):
                if not item.future.done():
                    item.future.set_result(row)
