"""Fetch checkpoints from the Hugging Face Hub by ``hf-hub:owner/repo[@revision]`` name.

Offline (``HF_HUB_OFFLINE=1``) only the local cache is read. Online, one quick request per file
asks the Hub first, so that a machine without network fails (or falls back to the cache) at once
instead of after huggingface_hub's retries; a failure names the cache folder it looked in.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
from huggingface_hub.file_download import repo_folder_name

from ..errors import DownloadError, InvalidArgumentError

HF_PREFIX = "hf-hub:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PROBE_TIMEOUT_S = 5.0
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_EXAMPLE = f"{HF_PREFIX}timm/davit_tiny.msft_in1k"


def is_hf_hub_name(name: object) -> bool:
    """Whether ``name`` is a Hugging Face Hub checkpoint name (starts with ``hf-hub:``)."""
    return isinstance(name, str) and name.startswith(HF_PREFIX)


def parse_hf_hub_name(name: str) -> tuple[str, str | None]:
    """Split ``hf-hub:owner/repo[@revision]`` into ``(repo_id, revision)``."""
    if not is_hf_hub_name(name):
        raise InvalidArgumentError(f"{name!r} is not a Hugging Face Hub name; expected e.g. {_EXAMPLE!r}")
    repo_id, at, revision = name[len(HF_PREFIX):].partition("@")
    if not _REPO_ID.fullmatch(repo_id) or (at and not revision):
        raise InvalidArgumentError(
            f"{name!r} does not name a Hugging Face Hub repo; expected {HF_PREFIX}owner/repo[@revision], "
            f"e.g. {_EXAMPLE!r}")
    return repo_id, revision or None


def hub_cache_folder(repo_id: str) -> Path:
    """Where huggingface_hub keeps the files of ``repo_id`` (under ``$HF_HUB_CACHE``)."""
    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


class _Unreachable(Exception):
    """The Hub could not be asked; ``reason`` says why."""


def download_hf_file(name: str, filenames: Sequence[str], missing_ok: bool = False) -> Path | None:
    """A local path to the first of ``filenames`` that the repo ``name`` has; None when it has
    none of them. Once the Hub proves unreachable (or offline mode is on) only the cache is read;
    when it holds none of them either, :class:`DownloadError` names the cache folder (None with
    ``missing_ok``)."""
    repo_id, revision = parse_hf_hub_name(name)
    reason = "offline mode (HF_HUB_OFFLINE=1) is on" if constants.HF_HUB_OFFLINE else None
    for filename in filenames:
        if reason is None:
            try:
                path = _fetch(repo_id, revision, filename)
            except _Unreachable as error:
                reason = str(error)
            else:
                if path is not None:
                    return path
                continue
        cached = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(cached, str):
            return Path(cached)
    if reason is not None and not missing_ok:
        raise DownloadError(_unavailable(repo_id, " or ".join(filenames), reason))
    return None


def _fetch(repo_id: str, revision: str | None, filename: str) -> Path | None:
    """Ask the Hub (once, briefly) whether it has ``filename``, and download it if so."""
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision), timeout=PROBE_TIMEOUT_S)
    except EntryNotFoundError:
        return None
    except HfHubHTTPError as error:  # no such repo or revision, gated, private
        raise DownloadError(f"the Hugging Face Hub refused {filename} of {repo_id!r}: "
                            f"{str(error).splitlines()[0]}") from None
    except Exception as error:  # the network: DNS, refused connection, timeout, proxy
        raise _Unreachable(f"the Hub is unreachable ({type(error).__name__}: {error})") from None
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except Exception as error:
        raise _Unreachable(f"the download failed ({type(error).__name__}: {error})") from None


def _unavailable(repo_id: str, filenames: str, reason: str) -> str:
    return (f"could not get {filenames} of Hugging Face Hub repo {repo_id!r}: {reason}, and the "
            f"local cache {hub_cache_folder(repo_id)} does not hold it. Run once with network "
            "access so that it is cached, set HF_HOME to a cache that holds it, give a local "
            "checkpoint file, or run offline with random weights (--random-weights; pretrained=False in Python)")


def download_hf_checkpoint(name: str) -> Path:
    """Return a local path to the weights of ``name`` (``model.safetensors``, else ``pytorch_model.bin``)."""
    path = download_hf_file(name, WEIGHT_FILES)
    if path is None:
        repo_id, _ = parse_hf_hub_name(name)
        raise DownloadError(f"Hugging Face Hub repo {repo_id!r} has neither "
                            f"{' nor '.join(WEIGHT_FILES)}; it holds no weights this library reads")
    return path
