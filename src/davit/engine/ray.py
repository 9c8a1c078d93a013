"""Ray Data: classify or embed the batches of a ``ray.data.Dataset`` with :class:`DaViTBatchPredictor`,
and ``davit predict / embed --engine ray`` for users who run a Ray cluster.

The predictor is a callable class for ``Dataset.map_batches``: Ray builds it once per actor (the
model loads once there, on the CPU or on the actor's GPU) and calls it with column batches::

    import ray
    from davit.engine.ray import DaViTBatchPredictor

    ds = ray.data.from_items([{"image": path} for path in paths])
    out = ds.map_batches(DaViTBatchPredictor, fn_constructor_kwargs={"model": "davit-tiny_3rdparty_in1k"},
                         batch_size=32, concurrency=2)

The ``image`` column holds file paths or ``SHARD#KEY`` names (``davit.data.sources``), encoded image
bytes, or HxWx3 uint8 arrays. Each row gets a ``record`` column, the JSON text of the prediction
record ``davit predict`` writes (:mod:`davit.records`), or with ``task="embed"`` an ``embedding``
column; an unreadable image gets its error record (or an empty embedding and an ``error``), and
the other rows of its batch are computed.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint.build import get_model
from ..checkpoint.card import Preprocessing
from ..checkpoint.resolve import model_and_weights
from ..data.images import EncodedImage
from ..data.sources import image_by_name
from ..dtypes import autocast_dtype
from ..errors import DavitError, InvalidArgumentError
from ..records import error_record, prediction_record
from .embed import Embeddings, EmbedOptions, check_output, embedding_function, save_embeddings
from .embed_shards import is_folder_output
from .infer import DEFAULT_MODEL, InferenceOptions, InferenceSummary, check_writer, find_images, not_done, open_output
from .predict import class_probabilities
from .results import ResultSink

TASKS = ("classify", "embed")


class DaViTBatchPredictor:
    """Classify (``task="classify"``) or embed (``task="embed"``) a column batch of images; see the
    module's docstring. ``model`` and ``pretrained`` are :func:`davit.get_model`'s (``False``: random
    weights drawn from ``seed``); ``device`` defaults to CUDA when the actor has a GPU."""

    def __init__(self, model: str, pretrained: bool | str = True, task: str = "classify", topk: int = 5,
                 dtype: str = "fp32", device: str | None = None, seed: int = 0, image_column: str = "image") -> None:
        if task not in TASKS:
            raise InvalidArgumentError(f"task {task!r}: use one of {list(TASKS)}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = get_model(model, pretrained=pretrained, device=self.device).eval()
        card = getattr(self.model, "card", None)
        self.transform = (card.preprocessing if card is not None else Preprocessing()).transform()
        self.amp = autocast_dtype(dtype, self.device)
        self.task, self.topk, self.image_column = task, topk, image_column
        self.names = getattr(self.model, "class_names", None)
        self.embed = embedding_function(self.model, pooled=True) if task == "embed" else None

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        images = list(batch[self.image_column])
        tensors: list[torch.Tensor] = []
        kept: list[int] = []
        errors: dict[int, str] = {}
        for position, image in enumerate(images):
            try:
                tensors.append(self.transform(_source(image)))
                kept.append(position)
            except DavitError as error:
                errors[position] = str(error)
        names = [_name(image, position) for position, image in enumerate(images)]
        out = dict(batch)
        if self.task == "embed":
            rows: list[np.ndarray] = [np.zeros((0,), np.float32)] * len(images)
            if tensors:
                assert self.embed is not None
                with torch.inference_mode(), torch.autocast(self.device.type, self.amp or torch.float32,
                                                            enabled=self.amp is not None):
                    values = self.embed(torch.stack(tensors).to(self.device)).float().cpu().numpy()
                for position, row in zip(kept, values):
                    rows[position] = row
            out["embedding"] = rows
            out["error"] = [errors.get(position, "") for position in range(len(images))]
            return out
        records = [json.dumps(error_record(errors[p], image=names[p])) if p in errors else ""
                   for p in range(len(images))]
        if tensors:
            scores = class_probabilities(self.model, torch.stack(tensors).to(self.device), self.amp).cpu().numpy()
            for position, row in zip(kept, scores):
                records[position] = json.dumps(prediction_record(row, self.names, self.topk, image=names[position]))
        out["record"] = records
        return out


def _source(image: Any) -> Any:
    """What the transform reads: a path or stored image by its name, bytes as an encoded file, arrays as they are."""
    if isinstance(image, str):
        return image_by_name(image)
    if isinstance(image, (bytes, bytearray)):
        return EncodedImage(bytes(image), "an image of the batch")
    return image


def _name(image: Any, position: int) -> str:
    return image if isinstance(image, str) else f"row {position}"


def ray_dataset(names: Sequence[str]) -> Any:
    """A Ray dataset of one ``image`` column holding ``names``, in order."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows come back in input order
    return ray.data.from_items([{"image": name} for name in names])


def ray_map(names: Sequence[str], concurrency: int, batch_size: int, num_gpus: float,
            **predictor: Any) -> list[dict[str, Any]]:
    """The rows :class:`DaViTBatchPredictor` gives for ``names``, in order, on the Ray cluster this
    process is connected to (``ray.init()`` first: a local one, or ``RAY_ADDRESS``'s)."""
    dataset = ray_dataset(names).map_batches(DaViTBatchPredictor, fn_constructor_kwargs=predictor,
                                             batch_size=batch_size, concurrency=concurrency, num_gpus=num_gpus,
                                             batch_format="numpy")
    return list(dataset.iter_rows())


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (``auto``: the running one), or start a local one."""
    try:
        import ray
    except ImportError:
        raise InvalidArgumentError("--engine ray needs Ray: pip install 'davit-toolkit[ray]'") from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-operator progress lines
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, configure_logging=True)



def predict_on_ray(options: InferenceOptions, sink: ResultSink | None, seed: int, address: str | None = None,
                   concurrency: int = 1, num_gpus: float = 0.0) -> InferenceSummary:
    """``davit predict --engine ray``: the records :func:`davit.engine.infer.infer` writes, in the same
    order to the same outputs (resume included), computed by Ray actors."""
    if options.backend != "torch" or options.show_dir:
        raise InvalidArgumentError("--engine ray runs the PyTorch model in Ray actors; drop --backend and --show-dir")
    paths = find_images(options.inputs).paths
    model_name, weights = model_and_weights(options.model, options.checkpoint, options.random_weights, DEFAULT_MODEL)
    output, done = open_output(options, sink)
    pending = not_done(paths, done)
    summary = InferenceSummary(total=len(paths), skipped=len(paths) - len(pending))
    try:
        if pending:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                check_writer(options, get_model(model_name, pretrained=weights, semantics=options.semantics))
            connect(address)
            rows = ray_map([str(path) for path in pending], concurrency, options.batch_size, num_gpus,
                           model=model_name, pretrained=weights, topk=options.topk, dtype=options.dtype,
                           device=options.device, seed=seed)
            for row in rows:
                record = json.loads(row["record"])
                if output is not None:
                    output.write(record)
                summary.done += 1
                summary.failed += "error" in record
    finally:
        if output is not None:
            output.close()
    return summary


def embed_on_ray(options: EmbedOptions, seed: int, address: str | None = None, concurrency: int = 1,
                 num_gpus: float = 0.0) -> Embeddings:
    """``davit embed --engine ray``: the pooled embeddings ``davit embed`` writes to one file, computed
    by Ray actors."""
    if options.tokens or is_folder_output(options.out):
        raise InvalidArgumentError("--engine ray writes pooled embeddings to one file (.npy, .npz, .safetensors); "
                                   "drop --tokens, or run a folder of parts under torchrun")
    check_output(Path(options.out))
    paths = find_images(options.inputs).paths
    connect(address)
    pretrained: bool | str = False if options.random_weights else options.checkpoint or True
    rows = ray_map([str(path) for path in paths], concurrency, options.batch_size, num_gpus, model=options.model,
                   pretrained=pretrained, task="embed", dtype=options.dtype, device=options.device, seed=seed)
    kept = [row for row in rows if not row["error"]]
    array = np.stack([np.asarray(row["embedding"], np.float32) for row in kept]) if kept else \
        np.zeros((0,), np.float32)
    names = [str(row["image"]) for row in kept]
    save_embeddings(options.out, array, names)
    return Embeddings(array, names, [str(row["error"]) for row in rows if row["error"]])
