"""The library's exceptions: one base, :class:`DavitError`, for every problem a user can fix.

The command line turns a :class:`DavitError` into a one-line message and exit status 1; any other
exception is a bug and surfaces with its traceback. Each class also derives from the built-in
exception a Python caller would expect (``ValueError`` for a bad value, ``FileNotFoundError`` for
a missing file, ``ImportError`` for a missing package), so ``except ValueError`` keeps working.
"""
from __future__ import annotations


class DavitError(Exception):
    """A problem with the user's input, files, data or environment; the message says what to do."""


class InvalidArgumentError(DavitError, ValueError):
    """An argument or option with a value the library cannot use."""


class UnknownModelError(InvalidArgumentError):
    """A model or architecture name that is not registered."""


class ConfigError(DavitError, ValueError):
    """A config file or override that cannot be loaded or applied."""


class PipelineError(ConfigError):
    """A data pipeline in a config that this library cannot build."""


class ImageLoadError(DavitError, ValueError):
    """An image that cannot be read or decoded."""


class DatasetError(DavitError, ValueError):
    """A dataset folder or annotation file that cannot be used."""


class CheckpointError(DavitError, ValueError):
    """A checkpoint file that cannot be read safely, or holds something other than expected."""


class CheckpointNotFoundError(DavitError, FileNotFoundError):
    """A checkpoint source that is neither a file, a URL, an ``hf-hub:`` name nor a model name."""


class CheckpointFormatError(CheckpointError):
    """A state dict whose keys do not fit any DaViT checkpoint layout."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose tensors do not fit the model."""


class DownloadError(DavitError, OSError):
    """A checkpoint that could not be downloaded, or arrived incomplete or with the wrong hash."""


class DeviceError(DavitError, RuntimeError):
    """A device that is not available on this machine."""


class ExportError(DavitError, RuntimeError):
    """An export that failed, or whose outputs disagree with the PyTorch model."""


class TrainError(DavitError, RuntimeError):
    """A training run that cannot start or go on."""


class MissingDependencyError(DavitError, ImportError):
    """An optional package that a feature needs is not installed; the message names the extra."""


def require(module: str, extra: str, feature: str) -> None:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the ``pip install`` line
    for the distribution's ``extra``."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{feature} needs the {module!r} package, which is not installed: "
            f"pip install 'davit-toolkit[{extra}]'") from error
