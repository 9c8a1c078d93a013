"""Reproducible training data order and augmentation.

:class:`TrainSampler` shuffles like ``DistributedSampler`` (seeded by seed and epoch, one shard per
process) and gives every draw its own random seed, derived from the run's seed, the epoch and the
image. :class:`SeededDataset` runs the decoding and augmentation of a draw under that seed, so the
augmentation of an image does not depend on the number of loader workers, and a run resumed in
the middle of an epoch sees exactly the images it would have seen. :func:`run_seed` and
:func:`seed_process` seed the run and each process's generators.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from ..data.datasets import DatasetError, LabelledImageDataset
from . import distributed
from .train_checkpoint import set_rng_state

logger = logging.getLogger("davit")

_MASK = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for image ``index`` in ``epoch`` of a run seeded with ``seed``: the three
    numbers combined and scrambled with a 64-bit mixing function."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xD1B54A32D192ED03 + index * 0x8CB92BA72F3D8DD7) & _MASK
    for multiplier, shift in ((0xBF58476D1CE4E5B9, 30), (0x94D049BB133111EB, 27)):
        x = ((x ^ (x >> shift)) * multiplier) & _MASK
    return (x ^ (x >> 31)) >> 1


class TrainSampler(DistributedSampler):
    """``DistributedSampler`` order (shuffled per epoch; call :meth:`set_epoch`) yielding
    ``(index, seed)`` pairs, starting at position ``start`` of this process's shard."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` draws of the epoch (those a resumed run has already seen)."""
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start:]
        return ((index, sample_seed(self.seed, self.epoch, index)) for index in indices)

    def __len__(self) -> int:
        return self.num_samples - self.start


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's CPU random generators, restoring Python's and torch's
    afterwards. NumPy's global generator stays as the last image left it (saving and restoring it
    costs more than the augmentation of a small image; the training loop draws nothing from it)."""
    python_state, torch_state = random.getstate(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        torch.set_rng_state(torch_state)


class SeededDataset(Dataset):
    """Wraps a :class:`~davit.data.datasets.LabelledImageDataset` so that
    ``dataset[(index, seed)]`` loads item ``index`` under ``seed`` as ``(image, label, errors)``.

    An image that cannot be read is skipped: the next readable one (``index + 1``, ...) takes its
    place, so batches keep their size, and the skipped images' errors come back in ``errors``.
    """

    def __init__(self, dataset: LabelledImageDataset, max_skips: int = 100) -> None:
        self.dataset = dataset
        self.max_skips = max_skips

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, list[str]]:
        index, seed = key
        errors: list[str] = []
        with seeded_rng(seed):
            for offset in range(min(self.max_skips, len(self.dataset))):
                sample = self.dataset[(index + offset) % len(self.dataset)]
                if sample.image is not None:
                    return sample.image, sample.label, errors
                errors.append(sample.error or f"image {index + offset} could not be read")
        raise DatasetError(f"{len(errors)} training images in a row could not be read, starting "
                           f"with {errors[0]}; check the dataset's files")


def run_seed(requested: int | None, configured: int | None, checkpoint: dict | None) -> int:
    """The run's seed: a resumed run's own, else --seed, randomness.seed or a random one (the
    same on every process)."""
    if checkpoint is not None:
        return int(checkpoint["meta"]["seed"])
    if requested is not None:
        return requested
    if configured is not None:
        return int(configured)
    return int(distributed.gather_objects(random.SystemRandom().randrange(2**31))[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_process(seed: int, rank: int, checkpoint: dict | None, world: int) -> None:
    """Per-process generators for dropout, drop path and Mixup/CutMix: from the checkpoint when
    resuming with as many processes, else from the seed and the rank."""
    if checkpoint is not None:
        states = checkpoint["rng"]
        if len(states) == world:
            set_rng_state(states[rank])
            return
        logger.warning("the checkpoint was written by %d process(es), this run has %d: random "
                       "streams restart from the seed, so the run will not repeat exactly",
                       len(states), world)
        seed += 1_000_003 * int(checkpoint["iteration"])
    seed_everything(seed + rank)
