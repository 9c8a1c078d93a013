"""Download checkpoints by URL into the torch hub cache, checking the SHA-256 prefix in the file name."""
from __future__ import annotations

import hashlib
import http.client
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

import torch
from tqdm import tqdm

from ..errors import DownloadError, InvalidArgumentError
from .io import replacing

TIMEOUT_S = 30.0
CHUNK_BYTES = 1 << 20
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})(?:\.[A-Za-z0-9]+)+$")



def checkpoint_cache_dir() -> Path:
    """The torch hub checkpoint cache: ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def expected_sha256_prefix(filename: str) -> str | None:
    """The SHA-256 prefix a file name carries after its last ``-`` (``name-700fdf7d.pth``), if any."""
    m = _HASH_IN_NAME.search(PurePosixPath(filename).name)
    return m.group(1) if m else None


def cached_path_for(url: str) -> Path:
    """Where :func:`download_checkpoint` keeps the file behind ``url``."""
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name:
        raise InvalidArgumentError(f"the URL {url!r} names no file")
    return checkpoint_cache_dir() / name


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _by_hand(dest: Path) -> str:
    return (f"download the file by hand and put it at {dest}, pass a local checkpoint, or run offline "
            "with random weights (--random-weights; pretrained=False in Python)")


def _stream(response, tmp: Path, url: str, dest: Path, progress: bool) -> str:
    """Copy ``response`` into ``tmp`` with a progress bar; return the SHA-256 hex digest."""
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    sha, received = hashlib.sha256(), 0
    with open(tmp, "xb") as f, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                    desc=dest.name, file=sys.stderr, disable=not progress) as bar:
        try:
            while chunk := response.read(CHUNK_BYTES):
                f.write(chunk)
                sha.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            raise DownloadError(
                f"the transfer of {url} was interrupted after {received} bytes ({_reason(e)}); "
                f"try again, or {_by_hand(dest)}") from e
    if total is not None and received < total:
        raise DownloadError(
            f"the transfer of {url} was interrupted: got {received} of {total} bytes; "
            f"try again, or {_by_hand(dest)}")
    return sha.hexdigest()


def download_checkpoint(url: str, progress: bool = True, check_hash: bool = True) -> Path:
    """Return the cached copy of ``url``, downloading it first when absent.

    The file is streamed to a temporary name next to its destination and moved into place only once
    complete and, when ``check_hash`` and the name carries a SHA-256 prefix, verified.
    """
    dest = cached_path_for(url)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"Downloading {url} to {dest}", file=sys.stderr)
    request = urllib.request.Request(url, headers={"User-Agent": "davit"})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except (OSError, http.client.HTTPException) as e:
        raise DownloadError(f"could not download {url}: {_reason(e)}; {_by_hand(dest)}") from e
    with replacing(dest, suffix=".part") as tmp:
        with response:
            digest = _stream(response, tmp, url, dest, progress)
        expected = expected_sha256_prefix(dest.name) if check_hash else None
        if expected and not digest.startswith(expected):
            raise DownloadError(
                f"the file downloaded from {url} has SHA-256 {digest}, but its name expects a hash "
                f"starting with {expected}; it was discarded. Try again, or {_by_hand(dest)}")
    return dest
