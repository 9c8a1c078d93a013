"""The ``davit predict`` workflow: classify many image files, folders and patterns in batches and
stream one result per image to a file (:mod:`.results`) or the caller's sink.

Images are decoded and preprocessed in DataLoader workers with the model's own preprocessing (its
card's, else the DaViT default); an unreadable file becomes an error record in its place and the
others go on. Every input is checked, and the output file opened, before a model is built.

Under ``torchrun --nproc_per_node N`` each process classifies every N-th image and, after each
batch, rank 0 gathers that batch's records from all processes and writes them. One step of all
processes covers a contiguous run of the inputs, so the output is written in input order and is
always a complete prefix of the run: there are no part files to merge, and an interrupted run
leaves a file that ``--resume`` can carry on from.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from tqdm import tqdm

from ..checkpoint.build import get_model
from ..checkpoint.card import Preprocessing
from ..checkpoint.resolve import model_and_weights, resolve_device
from ..data.calibration import calibration_and_holdout
from ..data.datasets import IMAGE_EXTENSIONS, Batch, LabelledImageDataset, walk_images
from ..data.images import StoredImage
from ..data.sources import is_stored_source, stored_samples
from ..dtypes import DTYPES, autocast_dtype
from ..errors import DavitError, InvalidArgumentError
from ..exported import (
    CHECKED_INT8_BACKENDS,
    exported_runtime,
    exported_source,
    open_backend,
    open_checked_int8,
    open_exported,
)
from ..records import error_record, prediction_record
from ..runtime import BACKENDS, CAPABILITIES, dtype_refusal
from ..vis.drawing import ClassScore, PredictionPictures
from . import distributed
from .predict import class_probabilities, sharded_loader
from .results import ResultSink, check_format, open_results, record_writer

logger = logging.getLogger("davit")

DEFAULT_MODEL = "davit-tiny_3rdparty_in1k"
PROGRESS_MIN = 9  # fewer images than this get no progress bar
_NO_LABEL = -1  # the dataset's label of every input; predict has no ground truth
_PATTERN_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class InferenceOptions:
    """What to classify, with which model, and where the results go (``davit predict``'s
    options). ``inputs`` are image files, folders (searched recursively) and glob patterns
    (``**`` matches any depth)."""

    inputs: Sequence[str]
    model: str | None = None  # default: the checkpoint's own card, else DEFAULT_MODEL
    checkpoint: str | None = None  # default: the model's published weights
    random_weights: bool = False  # build the model untrained (offline): no checkpoint, no download
    topk: int = 5
    batch_size: int = 16
    num_workers: int = 2
    out: str | None = None  # .jsonl or .csv; None: the records go to infer's sink
    dtype: str = "fp32"  # one of DTYPES; bf16/fp16 run under autocast
    device: str | None = None  # default: cuda when available
    semantics: str | None = None  # "official" or "mmpretrain"; None: as the weights' card says
    resume: bool = False  # skip the inputs ``out`` already holds, append the rest
    show_dir: str | None = None  # also save each image with its top-k drawn there (mmpretrain's show_dir)
    backend: str = "torch"  # or a CPU runtime the model is exported to: onnxruntime, openvino
    int8: bool = False  # quantise (torch: torchao PT2E; openvino: NNCF), used only where it agrees and is faster
    calibration: str | None = None  # int8: folder or wds:/hf: source of images to choose its ranges on
    holdout: str | None = None  # int8: images its top-1 is compared with fp32's on (default: the calibration ones)
    min_agreement: float = 0.99  # int8: the least share of images whose top-1 stays fp32's
    allow_slower_int8: bool = False  # int8: use it even when it is slower than the float model here


@dataclass
class InferenceSummary:
    """How a run went: inputs found, skipped as done earlier (``resume``; an earlier error is
    not done and is tried again), handled in this run (``done``: a record written, result or
    error) and, of those, failed; :attr:`classified` are the ones with a result."""

    total: int
    skipped: int = 0
    done: int = 0
    failed: int = 0
    not_images: int = 0  # files in the input folders and patterns passed over for their extension

    @property
    def classified(self) -> int:
        """Images of this run that got a prediction (``done`` less ``failed``)."""
        return self.done - self.failed


class InferenceInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the results finished so far have been written."""

    def __init__(self, summary: InferenceSummary, out: str | None) -> None:
        kept = f"; their results are in {out}; run the same command with --resume to " \
               "classify the rest" if out else ""
        super().__init__(f"interrupted after {summary.skipped + summary.done} of {summary.total} "
                         f"images{kept}")
        self.summary = summary


def infer(options: InferenceOptions, sink: ResultSink | None = None) -> InferenceSummary:
    """Classify ``options.inputs``; records go to ``options.out`` or else to ``sink`` (in
    input order, as they are computed; on rank 0 only). Raises :class:`InferenceInterrupted` on
    Ctrl-C, after closing the output."""
    _check(options)
    paths, not_images = find_images(options.inputs)
    on_torch = options.backend == "torch" and exported_source(options.model, options.checkpoint) is None
    device = _device(options.device if on_torch else options.device or "cpu")
    amp = autocast_dtype(options.dtype, device) if on_torch else None  # a runtime's own
    distributed.init_distributed(device)
    output, done = open_output(options, sink)
    pending = not_done(paths, done)
    summary = InferenceSummary(total=len(paths), skipped=len(paths) - len(pending), not_images=not_images)
    try:
        if pending:
            pictures = PredictionPictures(options.show_dir) \
                if options.show_dir and distributed.is_main_process() else None
            model = _load_model(options, device)
            check_writer(options, model)
            _classify(model, pending, options, device, amp, output, summary, pictures)
    finally:
        if output is not None:
            output.close()
    return summary


def not_done(paths: Sequence[Path | StoredImage], done: set[str]) -> list[Path | StoredImage]:
    """The inputs an earlier run's output (``done``: its image names) does not hold; a file
    counts as done however its path is spelled."""
    done_real = {os.path.realpath(name) for name in done}
    return [path for path in paths if os.path.realpath(str(path)) not in done_real]


def _check(options: InferenceOptions) -> None:
    """Refuse option values that no input can make work."""
    if options.dtype not in DTYPES:
        raise InvalidArgumentError(f"--dtype must be one of {', '.join(DTYPES)}, not "
                                   f"{options.dtype!r}")
    if options.topk < 1 or options.batch_size < 1 or options.num_workers < 0:
        raise InvalidArgumentError("topk and batch_size must be positive and num_workers at "
                                   "least 0")
    exported = exported_source(options.model, options.checkpoint, options.random_weights)
    if exported is None:
        model_and_weights(options.model, options.checkpoint, options.random_weights, DEFAULT_MODEL)
    else:
        exported_runtime(exported, options.backend, options.dtype)
        if options.device not in (None, "cpu"):
            raise InvalidArgumentError(f"{exported.name} runs on the CPU; drop --device {options.device}")
    if options.resume and not options.out:
        raise InvalidArgumentError("--resume carries on an output file; pass it with --out")
    if options.out:
        check_format(options.out)
    _check_backend(options)


def _check_backend(options: InferenceOptions) -> None:
    """Refuse a runtime that cannot run as asked (they run on the CPU, fp32 or OpenVINO's bf16)."""

    if options.backend not in BACKENDS:
        raise InvalidArgumentError(f"--backend must be one of {', '.join(BACKENDS)}, not {options.backend!r}")
    _check_int8(options)
    if options.backend == "torch":
        return
    if options.device not in (None, "cpu") and CAPABILITIES[options.backend].cpu_only:
        raise InvalidArgumentError(f"--backend {options.backend} runs on the CPU; drop --device "
                                   f"{options.device} or use --backend torch")
    refusal = dtype_refusal(options.backend, options.dtype)
    if refusal is not None:
        raise InvalidArgumentError(f"--backend {refusal}")


def _check_int8(options: InferenceOptions) -> None:
    if not options.int8:
        if options.calibration or options.holdout or options.allow_slower_int8:
            raise InvalidArgumentError("--calibration, --holdout and --allow-slower-int8 go with --int8")
        return
    if options.backend not in CHECKED_INT8_BACKENDS:
        raise InvalidArgumentError(f"--int8 runs on --backend torch (torchao PT2E) or openvino (NNCF), not "
                                   f"{options.backend}")
    if not options.calibration:
        raise InvalidArgumentError("--int8 needs --calibration FOLDER: images like the ones to classify, to "
                                   "choose the int8 ranges")
    if options.device not in (None, "cpu"):
        raise InvalidArgumentError(f"--int8 runs on the CPU; drop --device {options.device}")
    if exported_source(options.model, options.checkpoint, options.random_weights) is not None:
        raise InvalidArgumentError("--int8 quantises a PyTorch model; give the model (or its checkpoint) it was "
                                   "exported from, or export with davit export --int8")
    if not 0 <= options.min_agreement <= 1:
        raise InvalidArgumentError(f"--min-agreement is a share between 0 and 1, got {options.min_agreement}")


class FoundImages(NamedTuple):
    """The images inputs name (files, and stored images of webdataset shards and Hugging Face
    datasets), and how many other files their folders and patterns held."""

    paths: list[Path | StoredImage]
    not_images: int = 0


def find_images(inputs: Sequence[str]) -> FoundImages:
    """The image files ``inputs`` name, each once, in the given order: a file as it is, a folder's
    images (``IMAGE_EXTENSIONS``, any case) recursively in sorted order, and a pattern's sorted
    matches (its folders searched, its other files kept when they are images); files passed over
    for their extension are counted. A named file that is no regular file (a FIFO ...) is kept, and
    its record says so (it is never opened). ``wds:`` and ``hf:`` inputs name the samples of
    webdataset shards and Hugging Face datasets (:mod:`davit.data.sources`). An input that yields
    nothing is an error."""
    found: dict[str, Path | StoredImage] = {}
    empty = []
    not_images = 0
    for text in inputs:
        images = _expand(text)
        if not images.paths:
            empty.append(text)
        not_images += images.not_images
        for path in images.paths:
            found.setdefault(os.path.normpath(str(path)), path)
    if empty:
        raise InvalidArgumentError(
            f"{'; '.join(map(_nothing_found, empty))}: pass existing image files, folders holding "
            f"{'/'.join(IMAGE_EXTENSIONS)} images, or patterns such as 'photos/**/*.jpg'")
    return FoundImages(list(found.values()), not_images)


def expand_inputs(inputs: Sequence[str]) -> list[Path | StoredImage]:
    """The image files of :func:`find_images`."""
    return find_images(inputs).paths


def _nothing_found(text: str) -> str:
    """Why the input ``text`` yields no image."""
    if Path(text).expanduser().is_dir():
        return f"{text} holds no image"
    return f"{text} matches no image" if _PATTERN_CHARS & set(text) else f"{text} does not exist"


def _expand(text: str) -> FoundImages:
    if is_stored_source(text):
        return FoundImages(list(stored_samples(text).images))
    path = Path(text).expanduser()
    if path.is_dir():
        return _images_in(path)
    if path.exists() or not _PATTERN_CHARS & set(text):
        return FoundImages([path] if path.exists() else [])
    images: list[Path | StoredImage] = []
    not_images = 0
    for match in sorted(glob.glob(os.path.expanduser(text), recursive=True)):
        if os.path.isdir(match):
            inside = _images_in(Path(match))
            images.extend(inside.paths)
            not_images += inside.not_images
        elif match.lower().endswith(IMAGE_EXTENSIONS):
            images.append(Path(match))
        else:
            not_images += 1
    return FoundImages(images, not_images)


def _images_in(folder: Path) -> FoundImages:
    walk = walk_images(folder)
    paths: list[Path | StoredImage] = [folder / name for name in walk.files]
    return FoundImages(paths, walk.not_images)


def _device(requested: str | None) -> torch.device:
    """This process's device; under torchrun a CUDA run takes the GPU of its LOCAL_RANK."""
    if distributed.env_world_size() > 1:
        return distributed.select_device(requested)
    return resolve_device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))



def model_identity(model: nn.Module) -> str:
    """A fingerprint of what ``model`` computes: an exported file's bytes, or else its weights'
    names, shapes and values (with the card's class names), as 16 hex digits of SHA-256."""
    digest = hashlib.sha256()
    path = getattr(model, "path", None)
    if isinstance(path, Path) and path.is_file():
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    for name, value in model.state_dict().items():
        digest.update(f"{name}{tuple(value.shape)}{value.dtype}".encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(repr(getattr(model, "class_names", None)).encode())
    return digest.hexdigest()[:16]


def check_writer(options: InferenceOptions, model: nn.Module) -> None:
    """Rank 0 records (or, resuming, checks) the model that writes ``options.out``, and every
    process stops together when another model wrote it."""
    problem: DavitError | None = None
    if options.out is not None and distributed.is_main_process():
        try:
            record_writer(options.out, model_identity(model), options.resume)
        except DavitError as error:
            problem = error
    problem = distributed.gather_objects(problem)[0]
    if problem is not None:
        raise problem


def open_output(options: InferenceOptions,
                 sink: ResultSink | None) -> tuple[ResultSink | None, set[str]]:
    """Rank 0's sink and the paths the output holds already. Rank 0 opens the file and shares
    the paths, or its error, so that every process stops or goes on together."""
    main = distributed.is_main_process()
    if options.out is None:
        return (sink if main else None), set()
    opened: tuple[ResultSink, set[str]] | None = None
    shared: set[str] | DavitError = set()
    if main:
        try:
            opened = open_results(options.out, options.resume)
            shared = opened[1]
        except DavitError as error:
            shared = error
    shared = distributed.gather_objects(shared)[0]
    if isinstance(shared, DavitError):
        raise shared
    return (opened[0] if opened else None), shared


def _load_model(options: InferenceOptions, device: torch.device) -> nn.Module:
    exported = exported_source(options.model, options.checkpoint)
    if exported is not None:
        runner = open_exported(exported, options.backend, options.dtype)
        if not runner.classifies:
            raise InvalidArgumentError(f"{exported.name} gives {runner.output}, not class scores; export a "
                                       "classifier to classify, or use davit embed")
        return runner
    with distributed.main_process_first():  # one download, which the other processes reuse
        model, weights = model_and_weights(options.model, options.checkpoint, options.random_weights,
                                           DEFAULT_MODEL)
        net = get_model(model, pretrained=weights, device=device, semantics=options.semantics,
                        progress=distributed.is_main_process())
    return net if options.backend == "torch" and not options.int8 else _OnRuntime(net, options)


class _OnRuntime(nn.Module):
    """The model exported to a CPU runtime (:func:`davit.exported.open_backend`) in its place: the
    same card and class names, logits from the runtime."""

    def __init__(self, model: nn.Module, options: InferenceOptions) -> None:

        super().__init__()
        self.card = getattr(model, "card", None)
        self.class_names = getattr(model, "class_names", None)
        pre = self.card.preprocessing if self.card is not None else Preprocessing()
        size = pre.exact_size or (pre.crop_size, pre.crop_size)
        if options.int8:
            assert options.calibration is not None  # checked by _check_int8
            calibration, holdout = calibration_and_holdout(options.calibration, options.holdout, pre.transform())
            self.backend, report = open_checked_int8(
                model, options.backend, calibration, holdout, min_agreement=options.min_agreement,
                allow_slower=options.allow_slower_int8, dtype=options.dtype, batch_size=options.batch_size)
            logger.info("%s", report.summary())
        else:
            self.backend = open_backend(model, options.backend, dtype=options.dtype, input_size=(size[0], size[1]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backend(images)


def _classify(model: nn.Module, pending: list[Path | StoredImage], options: InferenceOptions,
              device: torch.device, amp: torch.dtype | None, output: ResultSink | None,
              summary: InferenceSummary, pictures: PredictionPictures | None = None) -> None:
    """Classify this process's share of ``pending``; rank 0 writes every process's records,
    batch by batch, to ``output`` (and draws each classified image into ``pictures``)."""
    card = getattr(model, "card", None)
    preprocessing = card.preprocessing if card is not None else Preprocessing()
    dataset = LabelledImageDataset([(path, _NO_LABEL) for path in pending],
                                   preprocessing.transform(), source="the inputs")
    loader = sharded_loader(dataset, len(pending), options.batch_size, options.num_workers, device)
    # the processes take part in every gather, so all run as many steps as the longest shard
    steps = math.ceil(math.ceil(len(pending) / distributed.get_world_size()) / options.batch_size)
    names = getattr(model, "class_names", None)
    quiet = not distributed.is_main_process() or len(pending) < PROGRESS_MIN
    # disable=None: tqdm draws no bar when stderr is not a terminal (a log file, a pipe), where
    # its carriage-return redraws would run into the result and error lines
    bar = tqdm(total=len(pending), unit="img", desc="predict", file=sys.stderr, dynamic_ncols=True,
               disable=True if quiet else None)
    batches = iter(loader)
    try:
        with bar:
            for _ in range(steps):
                batch = next(batches, None)
                mine = [] if batch is None else \
                    _records(model, batch, pending, device, amp, options.topk, names)
                step = sorted((r for part in distributed.gather_objects(mine) for r in part),
                              key=lambda item: item[0])
                for index, record in step:
                    if output is not None:
                        output.write(record)
                    if pictures is not None and "error" not in record:
                        pictures.save(pending[index], [ClassScore(top["label"], top["score"], top.get("class"))
                                                       for top in record["topk"]])
                    summary.failed += "error" in record
                summary.done += len(step)
                bar.update(len(step))
    except KeyboardInterrupt:
        raise InferenceInterrupted(summary, options.out) from None


def _records(model: nn.Module, batch: Batch, paths: list[Path | StoredImage], device: torch.device,
             amp: torch.dtype | None, k: int, names: Sequence[str] | None) -> list[tuple[int, dict]]:
    """(input index, prediction record) of each image of ``batch``: its top-``k`` or its error."""
    records = [(index, error_record(error, image=str(paths[index]))) for index, _, error in batch.failures]
    if batch.images is not None:
        scores = class_probabilities(model, batch.images.to(device, non_blocking=True), amp).float().cpu().numpy()
        for index, row in zip(batch.indices, scores):
            records.append((index, prediction_record(row, names, k, image=str(paths[index]))))
    return records
