"""Timing helpers shared by the benchmark and the int8 speed check: models timed side by side in
one process (alternating step by step, or block by block for runtimes whose threads stay busy after a
call), and the peak memory of one step."""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import torch

CEILING_SIZE = 2048


def time_alternately(steps: dict[str, Callable[[], object]], repeats: int, warmup: int,
                     device: torch.device) -> dict[str, list[float]]:
    """Seconds per step of each model; the order alternates from one repeat to the next."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            _synchronize(device)
            start = time.perf_counter()
            steps[name]()
            _synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def time_in_blocks(steps: dict[str, Callable[[], object]], repeats: int, warmup: int,
                   block: int) -> dict[str, list[float]]:
    """Seconds per step of each model, timed in blocks: ``block`` steps of one model in a row,
    after an untimed one, then the next model's (the order alternates from one round to the
    next), until each has ``repeats`` timed steps."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    round_index = 0
    while len(seconds[names[0]]) < repeats:
        for name in names if round_index % 2 == 0 else names[::-1]:
            steps[name]()  # wakes this runtime's threads; not timed
            for _ in range(min(block, repeats - len(seconds[name]))):
                start = time.perf_counter()
                steps[name]()
                seconds[name].append(time.perf_counter() - start)
        round_index += 1
    return seconds


def peak_memory(step: Callable[[], object], device: torch.device) -> int:
    """Bytes allocated at the peak of one step beyond what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with _without_profiler_chatter(), profile(activities=[ProfilerActivity.CPU],
                                              profile_memory=True) as prof:
        step()
    cpu = torch._C._autograd.DeviceType.CPU
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == cpu)
    total = peak = 0
    for _, nbytes in events:
        total += nbytes
        peak = max(peak, total)
    return peak


_PROFILER_CHATTER = re.compile(
    r"^(USDT|STAGE|ERROR):\d{4}-\d\d-\d\d [\d:.]+ \d+:\d+ \w+\.cpp:\d+\] "
    r"(profiler_start|profiler_stop|Completed Stage|gpuGetDeviceCount failed)")


@contextlib.contextmanager
def _without_profiler_chatter() -> Iterator[None]:
    """Hold back the start/stop lines that PyTorch's profiler library writes to stderr (file
    descriptor 2); every other line written meanwhile is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines(keepends=True):
                if not _PROFILER_CHATTER.match(line):
                    sys.stderr.write(line)


def matmul_step(device: torch.device, dtype: torch.dtype,
                size: int = CEILING_SIZE) -> Callable[[], object]:
    """One (size x size) @ (size x size) product: timed with the models, its fastest run gives the
    matmul ceiling."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    return lambda: torch.mm(a, b)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
