"""Fetch checkpoints from the Hugging Face Hub by ``hf-hub:owner/repo[@revision]`` name."""
from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

from ..errors import DownloadError, InvalidArgumentError

HF_PREFIX = "hf-hub:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
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


def download_hf_checkpoint(name: str) -> Path:
    """Return a local path to the weights of ``name`` (``model.safetensors``, else ``pytorch_model.bin``).

    Files come from (and go to) the huggingface_hub cache; with ``HF_HUB_OFFLINE=1`` only the cache is used.
    """
    repo_id, revision = parse_hf_hub_name(name)
    local_only = False
    for filename in WEIGHT_FILES:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=local_only))
        except EntryNotFoundError as e:
            error: Exception = e
            # Not found locally after the Hub was unreachable: look for the fallback in the cache only.
            local_only = local_only or isinstance(e, LocalEntryNotFoundError)
        except Exception as e:
            error = e
            break
    offline = " (offline mode is on, so only the local cache was searched)" if constants.HF_HUB_OFFLINE else ""
    reason = f"{type(error).__name__}: {str(error).rstrip('.')}"
    raise DownloadError(
        f"could not get the weights ({' or '.join(WEIGHT_FILES)}) of Hugging Face Hub repo {repo_id!r}"
        f"{offline}: {reason}. To fix it, run once with network access so the file is cached, set HF_HOME "
        "to a cache that already holds it, or pass a local checkpoint file.") from error
