"""Safe reading and atomic writing of checkpoint files (``.safetensors`` or torch ``.pth``/``.bin``).

Pickle-based files are read with ``torch.load(weights_only=True)``: a file whose pickle would build
anything but tensors and plain containers is refused before any of its code can run.
"""
from __future__ import annotations

import os
import pickle
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from ..errors import CheckpointError, CheckpointNotFoundError

PathLike = str | os.PathLike
WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")

# What torch's weights-only unpickler says when a pickle would build or call something other than tensors.
_UNSAFE_PICKLE = re.compile(r"GLOBAL|unrecognized function|Can only (?:create|build)")
_BLOCKED_GLOBAL = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)")
_CONVERT_HINT = ("If you trust its source, convert it to safetensors or a plain state dict (tensor values "
                 "only) in a trusted environment and load that instead.")



def _is_safetensors(path: Path) -> bool:
    return path.suffix.lower() == ".safetensors"


def _existing(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    return path


def _torch_load(path: Path, mmap: bool = False) -> Any:
    """``torch.load`` with weights only; ``mmap`` maps the tensors instead of reading them (for
    a look at the metadata), where the file's format allows it."""
    try:
        if mmap:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # a legacy (non-zip) file cannot be mapped
                pass
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _UNSAFE_PICKLE.search(str(e)):
            blocked = _BLOCKED_GLOBAL.search(str(e))
            detail = f" (it references {blocked.group(1)})" if blocked else ""
            raise CheckpointError(
                f"{path} holds Python objects other than tensors{detail} and is refused for safety: "
                f"loading it could run arbitrary code. {_CONVERT_HINT}") from None
        raise CheckpointError(
            f"{path} could not be read by the safe (weights-only) loader: it is corrupt, or uses pickle "
            f"features that loader refuses for safety. {_CONVERT_HINT}") from None
    except Exception as e:  # torch's own text may advise weights_only=False, which this library never does
        first = next((line for line in str(e).splitlines() if line.strip() and "weights_only" not in line), "")
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt, truncated or not a torch file?): "
            f"{type(e).__name__}{': ' + first.strip() if first else ''}") from None


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    state = dict(obj)
    if not state:
        raise CheckpointError(f"{path} holds no tensors")
    stripped = True
    while stripped:
        stripped = False
        for prefix in STRIPPED_PREFIXES:
            if all(isinstance(k, str) and k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{path}: entry {key!r} holds {type(value).__name__!r}, not a tensor; expected a state dict")
    return state


def read_checkpoint_file(path: PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict of ``path`` on the CPU (training wrappers and DDP/compile prefixes removed)
    and its metadata: the safetensors header's, or the ``meta`` dict of a ``.pth`` file."""
    path = _existing(path)
    if not _is_safetensors(path):
        obj = _torch_load(path)
        return _unwrap(obj, path), _meta_of(obj)
    try:
        with safetensors.safe_open(path, framework="pt", device="cpu") as f:
            names = f.keys()  # a safe_open handle is not iterable
            return _unwrap({k: f.get_tensor(k) for k in names}, path), dict(f.metadata() or {})
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (corrupt or truncated?): {e}") from None


def load_state_dict_file(path: PathLike) -> dict[str, Tensor]:
    """Load a state dict from ``path`` onto the CPU, unwrapping training wrappers and DDP/compile prefixes."""
    return read_checkpoint_file(path)[0]


def _meta_of(obj: Any) -> dict[str, Any]:
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    return {str(k): v for k, v in meta.items()} if isinstance(meta, Mapping) else {}


@contextmanager
def replacing(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends normally it is renamed over
    ``path`` (atomically), when it raises it is removed: ``path`` is never left half-written."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_state_dict_file(state_dict: Mapping[str, Tensor], path: PathLike,
                         metadata: dict[str, str] | None = None) -> Path:
    """Write ``state_dict`` (and string ``metadata``) atomically to ``path``; the suffix picks the format.

    ``.safetensors`` stores ``metadata`` in the header; any other suffix stores
    ``{"state_dict": ..., "meta": metadata}`` with ``torch.save``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        if _is_safetensors(path):
            tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
            safetensors.torch.save_file(tensors, tmp, metadata=dict(metadata) if metadata else None)
        else:
            torch.save({"state_dict": dict(state_dict), "meta": dict(metadata or {})}, tmp)
    return path


def read_metadata(path: PathLike) -> dict[str, str]:
    """Return the safetensors header metadata, or the ``meta`` dict of a ``.pth`` file ({} when
    none), values as strings."""
    return {k: v if isinstance(v, str) else str(v) for k, v in read_raw_metadata(path).items()}


def read_raw_metadata(path: PathLike) -> dict[str, Any]:
    """The metadata of ``path`` as stored (a ``.pth`` ``meta`` may hold more than strings),
    without reading the tensors."""
    path = _existing(path)
    if not _is_safetensors(path):
        return _meta_of(_torch_load(path, mmap=True))
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (corrupt or truncated?): {e}") from None
