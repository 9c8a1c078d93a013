"""The process-wide side of a training run: logging, SIGINT/SIGTERM, determinism, process group.

A :class:`TrainSession` is entered around a run and puts everything back when it ends, so that
a run inside a longer-lived Python process (a test, a notebook) leaves no trace in it.
"""
from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from tqdm import tqdm

from . import distributed

logger = logging.getLogger("davit")


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint was saved."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop saves a checkpoint at the next optimizer step and exits.
    A second SIGINT stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                return

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received %s: stopping after the current step and saving a checkpoint",
                       signal.Signals(signum).name)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous.clear()


class _TqdmHandler(logging.Handler):
    """Writes through tqdm, so that progress bars stay intact."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


class TrainSession:
    """What a training run changes in its process, restored on exit: the ``davit`` logger
    (level, propagation, handlers), the SIGINT/SIGTERM handlers, PyTorch's
    deterministic-algorithms mode and the process group. An error that ends the run is logged
    with its traceback at debug level, so it lands in ``train.log`` only."""

    def __init__(self) -> None:
        self.stop = StopFlag()
        self.handlers: list[logging.Handler] = []

    def __enter__(self) -> TrainSession:
        self._level, self._propagate = logger.level, logger.propagate
        self._deterministic = torch.are_deterministic_algorithms_enabled()
        return self

    def start(self, work_dir: Path, main_process: bool) -> None:
        """Log to the console and, on rank 0, to ``work_dir/train.log`` (which also gets debug
        records); catch SIGINT/SIGTERM."""
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        console = _TqdmHandler()
        console.setLevel(logging.INFO if main_process else logging.WARNING)
        console.setFormatter(logging.Formatter("%(message)s" if main_process else
                                               f"[rank {distributed.get_rank()}] %(message)s"))
        self.handlers.append(console)
        if main_process:
            work_dir.mkdir(parents=True, exist_ok=True)
            log_file = logging.FileHandler(work_dir / "train.log", encoding="utf-8")
            log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            self.handlers.append(log_file)
        for handler in self.handlers:
            logger.addHandler(handler)
        self.stop.install()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if isinstance(error, Exception) and not isinstance(error, Interrupted):
            logger.debug("stopped by an error", exc_info=(kind, error, traceback))  # type: ignore[arg-type]
        self.stop.restore()
        distributed.cleanup()
        for handler in self.handlers:
            logger.removeHandler(handler)
            handler.close()
        self.handlers.clear()
        logger.setLevel(self._level)
        logger.propagate = self._propagate
        torch.use_deterministic_algorithms(self._deterministic)
