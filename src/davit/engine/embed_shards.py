"""Embeddings at scale: ``davit embed INPUTS --out FOLDER/`` writes sharded, resumable output.

Each process (one, or many under ``torchrun``, on one machine or several) embeds every N-th image
not yet in the folder and writes its rows in parts of ``shard_size`` images, each part written
atomically (a temporary name, then a rename), so an interrupted run leaves only whole parts. A
later run with ``resume`` reads the keys the parts hold and embeds the rest; every image ends up
in exactly one part. An unreadable image is reported and not written, so a resumed run tries it
again.

The folder holds ``part-RUN-RANK-SEQ.parquet`` files (columns ``key``, a string: the image file's real path
or ``SHARD#KEY``, and ``embedding``, a fixed-size list of float32; tokens are a list of such lists),
or ``.npy`` arrays with a ``.keys.txt`` beside each, and ``_manifest.json`` (the model, its
fingerprint, the embedding shape, the parts). pandas and pyarrow read a parquet folder as one
table (``pandas.read_parquet(FOLDER)``; names starting with ``_`` are not data to them);
:func:`read_embedding_shards` reads either format.
"""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..checkpoint.card import Preprocessing
from ..checkpoint.io import replacing
from ..data.datasets import LabelledImageDataset
from ..data.images import StoredImage
from ..errors import DatasetError, InvalidArgumentError
from . import distributed
from .infer import PROGRESS_MIN, model_identity
from .predict import sharded_loader

MANIFEST = "_manifest.json"
SHARD_FORMATS = ("parquet", "npy")
_NO_LABEL = -1


@dataclass
class ShardedRun:
    """What a sharded embedding run did, over all processes."""

    total: int  # images the inputs name
    skipped: int  # already in the folder (resume)
    written: int  # embedded and written by this run
    failures: list[str]
    seconds: float
    shape: tuple[int, ...]

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def is_folder_output(out: str) -> bool:
    """Whether ``--out`` names a folder of shards (an existing folder, a trailing ``/`` or no suffix)."""
    return out.endswith(("/", os.sep)) or os.path.isdir(out) or not Path(out).suffix


def read_embedding_shards(folder: str | Path) -> tuple[np.ndarray, list[str]]:
    """All embeddings of a sharded folder and their keys, part by part (parts sorted by name)."""
    root = Path(folder)
    keys: list[str] = []
    arrays = []
    for part in _parts(root):
        part_keys, array = _read_part(part)
        keys.extend(part_keys)
        arrays.append(array)
    if not arrays:
        raise DatasetError(f"{root} holds no embedding parts (part-*.parquet or part-*.npy)")
    return np.concatenate(arrays), keys


def embed_to_shards(model: nn.Module, embed: Any, items: Sequence[Path | StoredImage], folder: Path,
                    shard_format: str, shard_size: int, resume: bool, batch_size: int, num_workers: int,
                    amp: torch.dtype | None, device: torch.device, kind: str, model_name: str) -> ShardedRun:
    """Embed the ``items`` not yet in ``folder`` with ``embed`` (a batch -> (B, ...) function) into
    parts of this process's rows; rank 0 writes the manifest when all are done."""
    if shard_format not in SHARD_FORMATS:
        raise InvalidArgumentError(f"shard format {shard_format!r}: use one of {list(SHARD_FORMATS)}")
    if shard_format == "parquet":
        _require_pyarrow()
    identity = model_identity(model)
    start = time.perf_counter()
    # rank 0 reads the folder and shares what it found, so that every process skips the same images
    found: tuple[set[str], str] | Exception | None = None
    if distributed.is_main_process():
        try:
            found = (_done_keys(folder, resume, identity), secrets.token_hex(3))
        except (DatasetError, InvalidArgumentError) as error:
            found = error
    found = distributed.gather_objects(found)[0]
    if isinstance(found, Exception):
        raise found
    assert found is not None
    done, run = found
    pending = [item for item in items if _key(item) not in done]
    card = getattr(model, "card", None)
    transform = (card.preprocessing if card is not None else Preprocessing()).transform()
    writer = _PartWriter(folder, shard_format, f"{run}-{distributed.get_rank():03d}", shard_size)
    failures: list[str] = []
    shape: tuple[int, ...] = ()
    if pending:
        dataset = LabelledImageDataset([(item, _NO_LABEL) for item in pending], transform, source="the inputs")
        loader = sharded_loader(dataset, len(pending), batch_size, num_workers, device)
        quiet = not distributed.is_main_process() or len(pending) < PROGRESS_MIN
        with tqdm(total=len(loader.sampler), unit="img", desc="embed", file=sys.stderr,  # type: ignore[arg-type]
                  dynamic_ncols=True, disable=True if quiet else None) as bar, torch.inference_mode():
            for batch in loader:
                failures.extend(error for _, _, error in batch.failures)
                if batch.images is not None:
                    with torch.autocast(device.type, amp or torch.float32, enabled=amp is not None):
                        rows = embed(batch.images.to(device, non_blocking=True)).float().cpu().numpy()
                    shape = tuple(rows.shape[1:])
                    writer.add([_key(pending[index]) for index in batch.indices], rows)
                bar.update(len(batch.indices) + len(batch.failures))
        writer.flush()
    results = distributed.gather_objects((writer.written, failures, shape))
    run_result = ShardedRun(len(items), len(items) - len(pending), sum(r[0] for r in results),
                            [message for r in results for message in r[1]], time.perf_counter() - start,
                            next((r[2] for r in results if r[2]), ()))
    if distributed.is_main_process():
        _write_manifest(folder, model_name, identity, kind, shard_format, run_result.shape)
    return run_result


def _key(item: Path | StoredImage) -> str:
    """The image's key: a file's real path (the same file, however it is spelled) or ``SHARD#KEY``."""
    return os.path.realpath(item) if isinstance(item, Path) else str(item)


def _done_keys(folder: Path, resume: bool, identity: str) -> set[str]:
    if folder.exists() and not folder.is_dir():
        raise InvalidArgumentError(f"{folder} is a file; give a folder for sharded embeddings")
    parts = _parts(folder) if folder.is_dir() else []
    if parts and not resume:
        raise InvalidArgumentError(f"{folder} already holds {len(parts)} embedding part(s); pass --resume to "
                                   "embed the images not in it yet, or choose an empty folder")
    manifest = folder / MANIFEST
    if parts and manifest.is_file():
        wrote = json.loads(manifest.read_text(encoding="utf-8")).get("model_identity")
        if wrote not in (None, identity):
            raise InvalidArgumentError(f"the embeddings in {folder} were made by another model ({wrote}); "
                                       "resume with the same model, or choose an empty folder")
    return {key for part in parts for key in _read_part(part, keys_only=True)[0]}


def _parts(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith("part-") and p.suffix in (".parquet", ".npy"))


def _read_part(part: Path, keys_only: bool = False) -> tuple[list[str], np.ndarray]:
    if part.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(part, columns=["key"] if keys_only else None)
        keys = [str(k) for k in table.column("key").to_pylist()]
        if keys_only:
            return keys, np.zeros((0,), np.float32)
        import pyarrow as pa

        values = table.column("embedding").combine_chunks()
        shape = [len(keys)]
        while pa.types.is_fixed_size_list(values.type):
            shape.append(values.type.list_size)
            values = values.flatten()
        return keys, np.asarray(values.to_numpy(zero_copy_only=False), np.float32).reshape(shape)
    keys = part.with_suffix(".keys.txt").read_text(encoding="utf-8").splitlines()
    return keys, (np.zeros((0,), np.float32) if keys_only else np.load(part))


class _PartWriter:
    """Buffers one process's rows and writes them in parts of ``shard_size``."""

    def __init__(self, folder: Path, shard_format: str, prefix: str, shard_size: int) -> None:
        self.folder, self.format, self.prefix, self.shard_size = folder, shard_format, prefix, shard_size
        self.keys: list[str] = []
        self.rows: list[np.ndarray] = []
        self.sequence = 0
        self.written = 0

    def add(self, keys: list[str], rows: np.ndarray) -> None:
        if any("\n" in key for key in keys):
            raise InvalidArgumentError("an image path holds a line break; it cannot be listed")
        self.keys.extend(keys)
        self.rows.extend(rows)
        while len(self.keys) >= self.shard_size:
            self._write(self.shard_size)

    def flush(self) -> None:
        if self.keys:
            self._write(len(self.keys))

    def _write(self, count: int) -> None:
        keys, rows = self.keys[:count], np.stack(self.rows[:count]).astype(np.float32)
        del self.keys[:count], self.rows[:count]
        self.folder.mkdir(parents=True, exist_ok=True)
        name = self.folder / f"part-{self.prefix}-{self.sequence:05d}.{self.format}"
        self.sequence += 1
        if self.format == "parquet":
            _write_parquet(name, keys, rows)
        else:
            with replacing(name.with_suffix(".keys.txt")) as listing:
                listing.write_text("".join(f"{k}\n" for k in keys), encoding="utf-8")
            with replacing(name, suffix=".npy") as tmp:  # the array last: a part counts once it exists
                np.save(tmp, rows)
        self.written += count


def _write_parquet(path: Path, keys: list[str], rows: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    values: Any = pa.array(rows.reshape(-1), pa.float32())
    for size in reversed(rows.shape[1:]):
        values = pa.FixedSizeListArray.from_arrays(values, size)
    with replacing(path, suffix=".parquet") as tmp:
        pq.write_table(pa.table({"key": pa.array(keys, pa.string()), "embedding": values}), tmp)


def _write_manifest(folder: Path, model_name: str, identity: str, kind: str, shard_format: str,
                    shape: tuple[int, ...]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / MANIFEST
    previous = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
    parts = _parts(folder)
    rows = sum(len(_read_part(part, keys_only=True)[0]) for part in parts)
    content = {"model": model_name, "model_identity": identity, "kind": kind, "format": shard_format,
               "shape": list(shape) or previous.get("shape", []), "rows": rows, "parts": [p.name for p in parts]}
    with replacing(manifest) as tmp:
        tmp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise InvalidArgumentError("parquet shards need pyarrow: pip install 'davit-toolkit[datasets]', "
                                   "or use --shard-format npy") from None
