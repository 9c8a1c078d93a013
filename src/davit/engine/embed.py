"""Image embeddings (``davit embed``, :func:`embed_images`): one vector, or every token, per image.

A Florence-2 encoder embeds with its projector: ``model.embed(x, pooled=True)`` is the pooled
image token (B, projection_dim), ``pooled=False`` all its tokens (B, 1 + h*w, projection_dim). A
classifier (no projector) gives pooled embeddings only: ``model.extract_feat(x, stage="pre_logits")``,
the pooled and normalised features that feed its head.

Images are read and preprocessed as :mod:`.infer` does (the model card's preprocessing, DataLoader
workers, the same input expansion). Output files record the image paths in input order:

* ``.npy``: the array, and the paths one per line in a sidecar ``NAME.paths.txt``;
* ``.npz``: arrays ``embeddings`` and ``paths`` (strings; ``np.load`` needs no pickle);
* ``.safetensors``: tensor ``embeddings``; metadata ``paths`` (a JSON list) and ``kind``.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..checkpoint.build import get_model
from ..checkpoint.card import Preprocessing
from ..checkpoint.io import replacing, save_state_dict_file
from ..checkpoint.resolve import resolve_device
from ..data.datasets import LabelledImageDataset
from ..dtypes import autocast_dtype
from ..errors import ImageLoadError, InvalidArgumentError
from ..exported import ExportedModel, exported_runtime, exported_source, open_exported
from . import distributed
from .embed_shards import ShardedRun, embed_to_shards, is_folder_output
from .infer import PROGRESS_MIN, expand_inputs
from .predict import sharded_loader

DEFAULT_MODEL = "davit-florence2-base"
FORMATS = (".npy", ".npz", ".safetensors")
_NO_LABEL = -1


@dataclass(frozen=True)
class EmbedOptions:
    """``davit embed``'s options: images (files, folders, patterns), model and output file."""

    inputs: Sequence[str]
    out: str  # .npy (+ .paths.txt), .npz or .safetensors; a folder: sharded parts (embed_shards)
    model: str = DEFAULT_MODEL
    checkpoint: str | None = None  # default: the model's published weights
    tokens: bool = False  # every token (B, T, D) instead of the pooled vector (B, D)
    batch_size: int = 16
    num_workers: int = 2
    dtype: str = "fp32"  # one of predict.DTYPES; bf16/fp16 run under autocast
    device: str | None = None  # default: cuda when available
    random_weights: bool = False  # build the model without weights (offline; seed torch first)
    shard_format: str = "parquet"  # a folder's parts: parquet or npy
    shard_size: int = 10_000  # images per part
    resume: bool = False  # a folder: embed only the images its parts do not hold yet


@dataclass
class Embeddings:
    """What a run computed: one row per readable image, its source, and the failures."""

    array: np.ndarray
    sources: list[Any]  # the inputs embedded, in order (paths for davit embed)
    failures: list[str] = field(default_factory=list)  # one message per unreadable image
    sharded: ShardedRun | None = None  # a run into a folder of parts: what it did (array stays empty)


def embed_images(model: nn.Module | str, inputs: Sequence[Any] | str | Path, pooled: bool = True,
                 batch_size: int = 16, num_workers: int = 0, dtype: str = "fp32",
                 device: str | torch.device | None = None, progress: bool = False) -> np.ndarray:
    """Embeddings of ``inputs`` as a float32 array: (N, D) pooled, (N, T, D) tokens.

    ``model``: a model, or a name/checkpoint for :func:`davit.get_model` (published weights).
    ``inputs``: image paths, folders and patterns (expanded as ``davit predict`` does), PIL images
    or HxWx3 uint8 arrays. The model is put in eval mode. An unreadable image raises
    :class:`davit.errors.ImageLoadError`.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    items: list[Any] = []
    for item in inputs:
        items.extend(expand_inputs([str(item)]) if isinstance(item, (str, Path)) else [item])
    net, target = _model_and_device(model, device)
    result = compute_embeddings(net, items, pooled, batch_size, num_workers, autocast_dtype(dtype, target),
                                target, progress)
    if result.failures:
        raise ImageLoadError("; ".join(result.failures))
    return result.array


def embed_files(options: EmbedOptions) -> Embeddings:
    """``davit embed``: embed ``options.inputs`` and write them with their paths to ``options.out``
    (the readable images only; the failures are returned). Inputs and output name are checked
    before the model is built."""
    out = Path(options.out)
    sharded = is_folder_output(options.out)
    if not sharded:
        check_output(out)
        if options.resume:
            raise InvalidArgumentError("--resume carries on a folder of embedding parts; give --out FOLDER/")
        if distributed.env_world_size() > 1:
            raise InvalidArgumentError("under torchrun each process writes its own parts: give --out FOLDER/ "
                                       "(sharded output) instead of one file")
    paths = expand_inputs(options.inputs)
    if options.batch_size < 1 or options.num_workers < 0 or options.shard_size < 1:
        raise InvalidArgumentError("batch_size and shard_size must be positive and num_workers at least 0")
    model, target, amp = _embedding_model(options)
    distributed.init_distributed(target)
    if sharded:
        run = embed_to_shards(model, embedding_function(model, not options.tokens), paths, out,
                              options.shard_format, options.shard_size, options.resume, options.batch_size,
                              options.num_workers, amp, target, "tokens" if options.tokens else "pooled",
                              options.model)
        return Embeddings(np.zeros((run.written, *run.shape), np.float32)[:0], [], run.failures, run)
    result = compute_embeddings(model, paths, not options.tokens, options.batch_size,
                                options.num_workers, amp, target, len(paths) >= PROGRESS_MIN)
    result.sources = [str(path) for path in result.sources]
    save_embeddings(out, result.array, result.sources, "tokens" if options.tokens else "pooled")
    return result


def _embedding_model(options: EmbedOptions) -> tuple[nn.Module, torch.device, torch.dtype | None]:
    """The model ``options`` name, the device it runs on and its autocast dtype; an exported file
    runs on its own runtime on the CPU, in the dtype it was asked for."""
    exported = exported_source(options.model, options.checkpoint, options.random_weights)
    if exported is not None:
        exported_runtime(exported, None, options.dtype)
        if options.device not in (None, "cpu"):
            raise InvalidArgumentError(f"{exported.name} runs on the CPU; drop --device {options.device}")
        model = open_exported(exported, None, options.dtype)
        embedding_function(model, not options.tokens)  # refuse a file that gives no embeddings, first
        return model, torch.device("cpu"), None
    target = resolve_device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if distributed.env_world_size() > 1:
        target = distributed.select_device(options.device)
    amp = autocast_dtype(options.dtype, target)
    if options.random_weights and options.checkpoint:
        raise InvalidArgumentError("--random-weights and --checkpoint exclude each other; pass one")
    pretrained: bool | str = False if options.random_weights else options.checkpoint or True
    return get_model(options.model, pretrained=pretrained, device=target), target, amp


def embedding_function(model: nn.Module, pooled: bool) -> Callable[[Tensor], Tensor]:
    """What embeds a batch: the projector's tokens (``model.embed``) where the model has one (or
    an exported file of them), else the classifier's pre-logits features (pooled only)."""
    if isinstance(model, ExportedModel):
        if model.output != "image_tokens":
            raise InvalidArgumentError(
                f"{model.path.name} gives {model.output}; embeddings come from an export of a Florence-2 "
                "encoder's image tokens (davit export MODEL OUT.onnx --encode-image), or from the model itself")
        exported = model
        return lambda x: exported.embed(x, pooled=pooled)
    net: Any = model  # its methods are not typed through nn.Module
    if getattr(model, "projector", None) is not None and hasattr(model, "embed"):
        return lambda x: net.embed(x, pooled=pooled)
    if not pooled:
        raise InvalidArgumentError(
            f"token embeddings come from a Florence-2 projector, which this {type(model).__name__} "
            "has not; use pooled embeddings (no --tokens), or a Florence-2 model with a projector "
            "such as davit-florence2-base")
    if getattr(model, "head", None) is None:
        raise InvalidArgumentError(f"{type(model).__name__} has neither a projector nor a "
                                   "classification head to pool its features with")
    return lambda x: net.forward_head(net.forward_features(x), pre_logits=True)


def compute_embeddings(model: nn.Module, items: Sequence[Any], pooled: bool, batch_size: int,
                       num_workers: int, amp: torch.dtype | None, device: torch.device,
                       progress: bool) -> Embeddings:
    """Embed ``items`` (paths, PIL images or arrays) in batches with the model's preprocessing."""
    embed = embedding_function(model, pooled)
    card = getattr(model, "card", None)
    transform = (card.preprocessing if card is not None else Preprocessing()).transform()
    dataset = LabelledImageDataset([(item, _NO_LABEL) for item in items], transform,
                                   source="the inputs")
    loader = sharded_loader(dataset, len(items), batch_size, num_workers, device)
    model.eval()
    rows: list[np.ndarray] = []
    kept: list[Any] = []
    failures: list[str] = []
    with tqdm(total=len(items), unit="img", desc="embed", file=sys.stderr, dynamic_ncols=True,
              disable=not progress) as bar, torch.inference_mode():
        for batch in loader:
            failures.extend(error for _, _, error in batch.failures)
            if batch.images is not None:
                with torch.autocast(device.type, amp or torch.float32, enabled=amp is not None):
                    out = embed(batch.images.to(device, non_blocking=True))
                rows.append(out.float().cpu().numpy())
                kept.extend(items[index] for index in batch.indices)
            bar.update(len(batch.indices) + len(batch.failures))
    array = np.concatenate(rows) if rows else np.zeros((0,), np.float32)
    return Embeddings(array, kept, failures)


def check_output(path: Path) -> None:
    """Refuse an output name whose suffix is not one of :data:`FORMATS`."""
    if path.suffix.lower() not in FORMATS:
        raise InvalidArgumentError(f"the output file must end in {', '.join(FORMATS)}; got {path}")


def paths_file(path: Path) -> Path:
    """The sidecar of a ``.npy`` output that lists its image paths: ``NAME.paths.txt``."""
    return path.with_suffix(".paths.txt")


def save_embeddings(path: str | Path, array: np.ndarray, paths: Sequence[str],
                    kind: str = "pooled") -> Path:
    """Write ``array`` and the image ``paths`` in the format ``path``'s suffix names, atomically."""
    path = Path(path)
    check_output(path)
    if any("\n" in p for p in paths):
        raise InvalidArgumentError("an image path holds a line break; it cannot be listed")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return save_state_dict_file({"embeddings": torch.from_numpy(np.ascontiguousarray(array))},
                                    path, {"paths": json.dumps(list(paths)), "kind": kind})
    with replacing(path, suffix=suffix) as tmp:
        if suffix == ".npz":
            np.savez(tmp, embeddings=array, paths=np.array(list(paths), dtype=str))
        else:
            np.save(tmp, array)
            with replacing(paths_file(path)) as listing:
                listing.write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")
    return path


def load_embeddings(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """The embeddings and image paths that :func:`save_embeddings` wrote."""
    path = Path(path)
    check_output(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            return f.get_tensor("embeddings"), json.loads((f.metadata() or {})["paths"])
    if suffix == ".npz":
        with np.load(path) as data:
            return data["embeddings"], [str(p) for p in data["paths"]]
    return np.load(path), paths_file(path).read_text(encoding="utf-8").splitlines()


def _model_and_device(model: nn.Module | str,
                      device: str | torch.device | None) -> tuple[nn.Module, torch.device]:
    """The model (built with its published weights when named) and the device it runs on."""
    if isinstance(model, (str, Path)):
        target = resolve_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return get_model(str(model), pretrained=True, device=target), target
    if device is not None:
        target = resolve_device(device)
        return model.to(target), target
    parameter = next(model.parameters(), None)
    return model, parameter.device if parameter is not None else torch.device("cpu")

