"""Train or fine-tune DaViT from an mmpretrain-style config, as mmpretrain's ``tools/train.py``.

``tools/train.py CONFIG`` runs the config's recipe: the model (``model``), the training and
validation data (``train_dataloader``, ``val_dataloader``, ``data_preprocessor``), the optimizer
and schedule (``optim_wrapper``, ``param_scheduler``, ``auto_scale_lr``, ``train_cfg``) and the
runtime (``default_hooks``, ``randomness``, ``load_from``, ``resume``). Under
``torchrun --nproc_per_node N`` each process trains a shard of every epoch (DDP: NCCL on GPUs,
gloo on CPUs) and rank 0 writes the logs and checkpoints.

Every epoch the model is validated with the evaluation code of ``tools/test.py`` and a
checkpoint is written atomically: ``epoch_N.pth``, ``latest.pth`` and ``best.pth`` hold the model,
optimizer, schedule, gradient scaler, EMA weights, counters and every process's random-generator
states, so ``--resume auto`` continues exactly where the run stopped.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint.io import CheckpointError
from ..checkpoint.load import CheckpointMismatchError, load_into, load_pretrained
from ..config import ConfigError, dump_config, format_config, load_config
from ..data import ImageLoadError
from ..data.datasets import DatasetError, LabelledImageDataset, build_dataset, collate_samples
from ..data.train_transforms import (BatchAugment, PipelineError, build_batch_augment,
                                     build_train_transform)
from . import distributed
from .checkpointing import (BEST, LATEST, link_atomic, load_training_checkpoint, prune,
                            rng_state, save_atomic, set_rng_state)
from .evaluate import (AMP_DTYPES, EvaluatorSpec, ModelSpec, accuracy, build_model,
                       checkpoint_source, evaluator_spec, model_spec, predict, select_device,
                       transform_from_config)
from .optim import build_optimizer, build_scheduler, optim_settings, scaled_lr
from .recorder import TrainRecorder
from .sampling import SeededDataset, TrainSampler
from ..argtypes import positive_int

logger = logging.getLogger("davit")

TRAIN_CFG_KEYS = {"type", "by_epoch", "max_epochs", "val_interval", "val_begin"}
# pin_memory follows the device; collate_fn is the library's own.
LOADER_KEYS = {"batch_size", "num_workers", "persistent_workers", "pin_memory", "sampler",
               "dataset", "collate_fn"}


class TrainError(RuntimeError):
    """A run that cannot start or go on; the message names the cause and the fix."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint was saved."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Train or fine-tune DaViT from a config (mmpretrain's tools/train.py).")
    parser.add_argument("config", help="config file, e.g. configs/davit/davit-tiny_4xb256_in1k.py")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default: the config's "
                                           "work_dir, else work_dirs/<config name>)")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config settings, e.g. train_dataloader.batch_size=64")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="auto|PATH",
                        help="continue a run: 'auto' (the default when the flag has no value) "
                             "takes latest.pth from the work dir, or starts afresh when there is "
                             "none; PATH takes that checkpoint")
    parser.add_argument("--amp", nargs="?", const="fp16", choices=sorted(AMP_DTYPES),
                        help="mixed precision under autocast (bare --amp: fp16, with a gradient "
                             "scaler; bf16 needs none)")
    parser.add_argument("--compile", action="store_true", help="run the model through torch.compile")
    parser.add_argument("--accumulate", type=positive_int, metavar="N",
                        help="gradient accumulation: one optimizer step every N batches "
                             "(optim_wrapper.accumulative_counts)")
    parser.add_argument("--clip-grad", type=float, metavar="MAX_NORM",
                        help="clip the gradients' total L2 norm (optim_wrapper.clip_grad.max_norm)")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="recompute block activations in the backward pass to save memory")
    parser.add_argument("--ema", type=float, nargs="?", const=0.9998, metavar="DECAY",
                        help="keep an exponential moving average of the weights (bare --ema: "
                             "decay 0.9998, mmpretrain's EMAHook momentum 2e-4)")
    parser.add_argument("--seed", type=int, help="random seed (randomness.seed; default random)")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic algorithms only (randomness.deterministic)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available); "
                                          "under torchrun each process takes GPU LOCAL_RANK")
    parser.add_argument("--checkpoint-iters", type=positive_int, metavar="N",
                        help="also save a checkpoint (iter_N.pth, latest.pth) every N optimizer steps")
    parser.add_argument("--no-validate", action="store_true", help="skip validation")
    parser.add_argument("--launcher", choices=["none", "pytorch"],
                        help="accepted for mmpretrain compatibility; torchrun's environment decides")
    parser.add_argument("--local-rank", "--local_rank", type=int, help=argparse.SUPPRESS)
    return parser


@dataclass
class Setup:
    """What the config and the command line ask for, checked before anything heavy is built."""

    cfg: dict
    spec: ModelSpec
    work_dir: Path
    max_epochs: int
    val_interval: int
    val_begin: int
    batch_size: int
    num_workers: int
    persistent_workers: bool
    accumulation: int
    clip_grad: float | None
    label_smoothing: float
    ema_decay: float | None
    amp: torch.dtype | None
    checkpoint_interval: int
    max_keep: int
    log_interval: int
    checkpoint_iters: int | None


@dataclass
class Progress:
    """Counters saved in checkpoints."""

    epoch: int = 0          # epochs completed
    epoch_iter: int = 0     # batches done in the current epoch (a multiple of the accumulation)
    step: int = 0           # optimizer steps done
    best: dict[str, Any] = field(default_factory=dict)
    last_checkpoint: Path | None = None


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


def main(argv: Sequence[str] | None = None, prog: str = "tools/train.py") -> int:
    """Run the training; 0 on success, 1 with a one-line message on bad input or a diverged
    loss, 128 + the signal number after SIGINT/SIGTERM (with a checkpoint saved)."""
    args = build_parser(prog).parse_args(argv)
    previous_level, previous_propagate = logger.level, logger.propagate
    handlers: list[logging.Handler] = []
    deterministic = torch.are_deterministic_algorithms_enabled()
    stop = StopFlag()
    try:
        return _run(args, handlers, stop)
    except Interrupted as interrupted:
        return 128 + interrupted.signum
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as error:
        rank = f"[rank {distributed.get_rank()}] " if distributed.get_world_size() > 1 else ""
        message = " ".join(str(error).split()) or type(error).__name__
        logger.debug("stopped by an error", exc_info=True)  # the traceback, in train.log only
        print(f"{rank}{prog}: error: {message}", file=sys.stderr)
        return 1
    finally:
        stop.restore()
        distributed.cleanup()
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(previous_level)
        logger.propagate = previous_propagate
        torch.use_deterministic_algorithms(deterministic)


def _run(args: argparse.Namespace, handlers: list[logging.Handler], stop: StopFlag) -> int:
    if args.launcher == "pytorch" and "WORLD_SIZE" not in os.environ:
        raise ValueError("--launcher pytorch needs torchrun: torchrun --nproc_per_node N "
                         "tools/train.py CONFIG")
    cfg = load_config(args.config, args.cfg_options)
    randomness = dict(cfg.get("randomness") or {})
    deterministic = args.deterministic or bool(randomness.get("deterministic", False))
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = bool((cfg.get("env_cfg") or {}).get("cudnn_benchmark", False))

    device = select_device(args.device)
    distributed.init_distributed(device)
    rank, world = distributed.get_rank(), distributed.get_world_size()
    main_process = rank == 0
    work_dir = Path(args.work_dir or cfg.get("work_dir") or Path("work_dirs") / Path(args.config).stem)
    _setup_logging(work_dir, main_process, handlers)
    stop.install()

    # Rank 0 decides, so that every process resumes from the same file (or none does).
    resume = _resume_source(args.resume, cfg.get("resume", False), cfg.get("load_from"), work_dir) \
        if main_process else None
    resume = distributed.gather_objects(resume)[0]
    checkpoint = load_training_checkpoint(resume) if resume else None

    # Data first: a fine-tuning config may take its class count from the training folders.
    preprocessor = (cfg.get("model") or {}).get("data_preprocessor") or cfg.get("data_preprocessor") or {}
    train_loader_cfg = _loader_cfg(cfg, "train_dataloader")
    train_set = _build_train_set(cfg, train_loader_cfg, preprocessor)
    setup = _setup(args, cfg, train_set, train_loader_cfg, work_dir)
    validate = not args.no_validate and cfg.get("val_dataloader") is not None
    val_set = _build_val_set(cfg, setup.spec.num_classes, train_set) if validate else None

    seed = _seed(args.seed, randomness.get("seed"), checkpoint)
    _seed_everything(seed)
    setup.cfg["randomness"] = {**randomness, "seed": seed, "deterministic": deterministic}

    model = build_model(setup.spec)
    if checkpoint is None and cfg.get("load_from"):
        source = cfg["load_from"]
        with distributed.main_process_first():
            try:
                load_pretrained(model, checkpoint_source(source), progress=main_process)
            except CheckpointMismatchError as error:
                raise TrainError(f"load_from={source!r} does not fit the configured model: {error}") from None
        logger.info("loaded the weights of %s (load_from)", source)
    model.to(device)
    ema = None
    if setup.ema_decay is not None:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(setup.ema_decay), use_buffers=True)

    total_batch = setup.batch_size * world * setup.accumulation
    lr = scaled_lr(cfg.get("optim_wrapper") or {}, cfg.get("auto_scale_lr"), total_batch)
    optimizer = build_optimizer(model, cfg.get("optim_wrapper") or {}, lr)
    sampler = TrainSampler(train_set, world, rank, seed)
    if setup.batch_size > len(sampler):
        raise TrainError(
            f"train_dataloader.batch_size is {setup.batch_size} but the training set has only "
            f"{len(train_set)} images ({len(sampler)} per process); lower it, e.g. --cfg-options "
            f"train_dataloader.batch_size={len(sampler)}")
    batches_per_epoch = math.ceil(len(sampler) / setup.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / setup.accumulation)
    scheduler = build_scheduler(optimizer, cfg.get("param_scheduler"), steps_per_epoch,
                                setup.max_epochs, lr)
    scaler = torch.amp.GradScaler(device.type) if setup.amp == torch.float16 else None

    progress = Progress()
    if checkpoint is not None:
        progress = _restore(checkpoint, resume, model, optimizer, scheduler, scaler, ema, world,
                            setup.batch_size)
    _seed_process(seed, rank, checkpoint, world)

    train_loader = DataLoader(
        SeededDataset(train_set), batch_size=setup.batch_size, sampler=sampler,
        num_workers=setup.num_workers, collate_fn=_collate_train,
        pin_memory=device.type == "cuda", worker_init_fn=_ignore_sigint,
        persistent_workers=setup.persistent_workers and setup.num_workers > 0,
        generator=torch.Generator().manual_seed(seed))
    val_loader = _val_loader(cfg, val_set, rank, world, device) if val_set is not None else None
    evaluator = _val_evaluator(cfg, setup.spec.num_classes) if val_set is not None else None
    batch_augment = build_batch_augment((cfg.get("model") or {}).get("train_cfg"),
                                        setup.spec.num_classes)

    train_model: nn.Module = model
    if world > 1:
        train_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    ddp_model = train_model
    if args.compile:
        train_model = torch.compile(train_model)

    recorder = TrainRecorder(work_dir, progress.step if checkpoint is not None else None) \
        if main_process else None
    if main_process:
        dump_config(setup.cfg, work_dir / Path(args.config).name)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info("training %s: %d parameters (%d trainable), %d classes, %d training images%s, "
                    "%d process(es) on %s, %d images per step (lr %.3g), %d epochs of %d steps; "
                    "work dir %s", Path(args.config).name, sum(p.numel() for p in model.parameters()),
                    trainable, setup.spec.num_classes, len(train_set),
                    f", {len(val_set)} validation images" if val_set is not None else "",
                    world, device.type, total_batch, lr, setup.max_epochs, steps_per_epoch, work_dir)
        if checkpoint is not None:
            logger.info("resumed from %s at epoch %d, step %d", resume, progress.epoch, progress.step)

    run = _Loop(setup, model, train_model, ddp_model, ema, optimizer, scheduler, scaler,
                batch_augment, train_loader, sampler, val_loader, evaluator, device, recorder,
                progress, stop, seed, world, rank, steps_per_epoch, batches_per_epoch)
    try:
        run.train()
    finally:
        if recorder is not None:
            recorder.close()
    return 0


def _setup_logging(work_dir: Path, main_process: bool, handlers: list[logging.Handler]) -> None:
    """Console (through tqdm, so progress bars stay intact) and, on rank 0, ``train.log``, which
    also gets debug records (an error's traceback)."""
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    console = _TqdmHandler()
    console.setLevel(logging.INFO if main_process else logging.WARNING)
    console.setFormatter(logging.Formatter("%(message)s" if main_process else
                                           f"[rank {distributed.get_rank()}] %(message)s"))
    handlers.append(console)
    if main_process:
        work_dir.mkdir(parents=True, exist_ok=True)
        log_file = logging.FileHandler(work_dir / "train.log", encoding="utf-8")
        log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handlers.append(log_file)
    for handler in handlers:
        logger.addHandler(handler)


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


def _resume_source(requested: str | None, cfg_resume: Any, load_from: Any, work_dir: Path) -> Path | None:
    """The checkpoint to resume from: --resume PATH, or latest.pth for --resume auto (and for the
    config's ``resume=True``, which like mmengine's takes ``load_from`` when given)."""
    if requested is None and cfg_resume:
        requested = str(load_from) if load_from else "auto"
    if requested is None:
        return None
    if requested != "auto":
        return Path(requested).expanduser()
    latest = work_dir / LATEST
    if latest.is_file():
        return latest
    logger.info("--resume auto: no %s in %s, starting a new run", LATEST, work_dir)
    return None


def _loader_cfg(cfg: dict, key: str) -> dict:
    loader = cfg.get(key)
    if not isinstance(loader, dict) or not isinstance(loader.get("dataset"), dict):
        raise ConfigError(f"the config has no {key} with a dataset")
    unknown = sorted(set(loader) - LOADER_KEYS)
    if unknown:
        raise ConfigError(f"{key} options {unknown} are not supported; supported: {sorted(LOADER_KEYS)}")
    sampler = loader.get("sampler") or {}
    if sampler.get("type", "DefaultSampler") != "DefaultSampler":
        raise ConfigError(f"{key}.sampler must be DefaultSampler (shuffling is per epoch and "
                          "process, as DistributedSampler)")
    return loader


def _dataset(cfg: dict, key: str, transform: Any, num_classes: int | None) -> LabelledImageDataset:
    """``build_dataset`` for ``<key>.dataset``, its messages naming that key."""
    dataset_cfg = {k: v for k, v in cfg[key]["dataset"].items() if k != "pipeline"}
    try:
        return build_dataset(dataset_cfg, transform, num_classes)
    except DatasetError as error:
        raise DatasetError(str(error).replace("test_dataloader", key)) from None


def _build_train_set(cfg: dict, loader: dict, preprocessor: dict) -> LabelledImageDataset:
    if "mean" not in preprocessor or "std" not in preprocessor or not preprocessor.get("to_rgb", False):
        raise ConfigError("data_preprocessor needs mean, std (RGB, 0-255 scale) and to_rgb=True, "
                          "e.g. mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]")
    pipeline = loader["dataset"].get("pipeline") or cfg.get("train_pipeline")
    if not pipeline:
        raise ConfigError("the config has no train_dataloader.dataset.pipeline")
    try:
        transform = build_train_transform(pipeline, preprocessor["mean"], preprocessor["std"])
    except PipelineError as error:
        raise ConfigError(f"train_dataloader.dataset.pipeline: {error}") from None
    head = ((cfg.get("model") or {}).get("head") or {})
    return _dataset(cfg, "train_dataloader", transform, head.get("num_classes"))


def _setup(args: argparse.Namespace, cfg: dict, train_set: LabelledImageDataset, loader: dict,
           work_dir: Path) -> Setup:
    """Check the config and merge the command-line options into it (the dumped config shows the
    values the run used)."""
    cfg = dict(cfg)
    model_cfg = dict(cfg.get("model") or {})
    head = dict(model_cfg.get("head") or {})
    if head.get("num_classes") is None:
        head["num_classes"] = len(train_set.classes or [])
        logger.info("model.head.num_classes is None: using the %d classes of the training set",
                    head["num_classes"])
    backbone = dict(model_cfg.get("backbone") or {})
    if args.grad_checkpointing:
        backbone["grad_checkpointing"] = True
    model_cfg.update(head=head, backbone=backbone)
    cfg["model"] = model_cfg
    spec = model_spec(model_cfg)
    loss = dict(head.get("loss") or {"type": "CrossEntropyLoss"})
    if loss.pop("loss_weight", 1.0) != 1.0:
        raise ConfigError("model.head.loss.loss_weight other than 1.0 is not supported; scale the "
                          "learning rate instead")
    if loss.get("type") == "LabelSmoothLoss":
        if loss.get("mode", "original") != "original" or set(loss) - {"type", "label_smooth_val", "mode"}:
            raise ConfigError("model.head.loss: LabelSmoothLoss is supported with mode='original'")
        smoothing = float(loss.get("label_smooth_val", 0.1))
    elif loss == {"type": "CrossEntropyLoss"}:
        smoothing = 0.0
    else:
        raise ConfigError(f"model.head.loss {loss!r} is not supported; use LabelSmoothLoss or "
                          "CrossEntropyLoss")

    optim_wrapper = dict(cfg.get("optim_wrapper") or {})
    if args.accumulate is not None:
        optim_wrapper["accumulative_counts"] = args.accumulate
    if args.clip_grad is not None:
        optim_wrapper["clip_grad"] = {"max_norm": args.clip_grad}
    if args.amp is not None:
        optim_wrapper.update(type="AmpOptimWrapper", dtype="bfloat16" if args.amp == "bf16" else "float16")
    known = {"type", "optimizer", "paramwise_cfg", "clip_grad", "accumulative_counts", "dtype", "loss_scale"}
    if set(optim_wrapper) - known or optim_wrapper.get("type", "OptimWrapper") not in ("OptimWrapper", "AmpOptimWrapper"):
        raise ConfigError(f"optim_wrapper {optim_wrapper.get('type', 'OptimWrapper')} with options "
                          f"{sorted(set(optim_wrapper) - known)} is not supported; use OptimWrapper "
                          "or AmpOptimWrapper (dtype float16 or bfloat16)")
    cfg["optim_wrapper"] = optim_wrapper
    settings = optim_settings(optim_wrapper)
    amp = None
    if optim_wrapper.get("type") == "AmpOptimWrapper":
        amp = "bf16" if optim_wrapper.get("dtype") in ("bfloat16", "bf16") else "fp16"

    train_cfg = dict(cfg.get("train_cfg") or {})
    if set(train_cfg) - TRAIN_CFG_KEYS or not train_cfg.get("by_epoch", True):
        raise ConfigError(f"train_cfg supports epoch-based training ({sorted(TRAIN_CFG_KEYS)}), "
                          f"got {train_cfg}")
    max_epochs = train_cfg.get("max_epochs")
    if not isinstance(max_epochs, int) or max_epochs < 1:
        raise ConfigError(f"train_cfg.max_epochs must be a positive integer, got {max_epochs!r}")
    hooks = cfg.get("default_hooks") or {}
    checkpoint_hook, logger_hook = hooks.get("checkpoint") or {}, hooks.get("logger") or {}
    batch_size = loader.get("batch_size")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"train_dataloader.batch_size must be a positive integer, got {batch_size!r}")

    custom_hooks = list(cfg.get("custom_hooks") or [])
    if args.ema is not None:
        custom_hooks = [h for h in custom_hooks if h.get("type") != "EMAHook"]
        custom_hooks.append({"type": "EMAHook", "momentum": 1.0 - args.ema})
        cfg["custom_hooks"] = custom_hooks
    ema_decay = None
    for hook in custom_hooks:
        if hook.get("type") != "EMAHook" or set(hook) - {"type", "momentum", "priority"}:
            raise ConfigError(f"custom_hooks: {hook!r} is not supported; only "
                              "dict(type='EMAHook', momentum=...) is")
        ema_decay = 1.0 - float(hook.get("momentum", 0.0002))
        if not 0.0 < ema_decay < 1.0:
            raise ConfigError(f"EMAHook momentum must be between 0 and 1, got {hook.get('momentum')}")
    return Setup(
        cfg=cfg, spec=spec, work_dir=work_dir, max_epochs=max_epochs,
        val_interval=int(train_cfg.get("val_interval", 1)),
        val_begin=int(train_cfg.get("val_begin", 1)), batch_size=batch_size,
        num_workers=int(loader.get("num_workers", 0)),
        persistent_workers=bool(loader.get("persistent_workers", False)),
        accumulation=settings.accumulation, clip_grad=settings.clip_grad,
        label_smoothing=smoothing, ema_decay=ema_decay, amp=AMP_DTYPES[amp] if amp else None,
        checkpoint_interval=int(checkpoint_hook.get("interval", 1)),
        max_keep=int(checkpoint_hook.get("max_keep_ckpts", -1)),
        log_interval=int(logger_hook.get("interval", 50)), checkpoint_iters=args.checkpoint_iters)


def _build_val_set(cfg: dict, num_classes: int, train_set: LabelledImageDataset) -> LabelledImageDataset:
    _loader_cfg(cfg, "val_dataloader")
    try:
        transform = transform_from_config({**cfg, "test_dataloader": cfg["val_dataloader"]})
    except ConfigError as error:
        raise ConfigError(str(error).replace("test pipeline", "validation pipeline")
                          .replace("test_dataloader", "val_dataloader")) from None
    val_set = _dataset(cfg, "val_dataloader", transform, num_classes)
    if val_set.classes and train_set.classes and val_set.classes != train_set.classes:
        raise DatasetError(f"the validation class folders of {val_set.source} "
                           f"({', '.join(val_set.classes[:5])}, ...) differ from the training "
                           f"ones of {train_set.source} ({', '.join(train_set.classes[:5])}, ...); "
                           "labels follow the sorted folder names, so both need the same folders")
    return val_set


def _val_loader(cfg: dict, val_set: LabelledImageDataset, rank: int, world: int,
                device: torch.device) -> DataLoader:
    loader = cfg["val_dataloader"]
    batch_size = int(loader.get("batch_size", 1))
    sampler = distributed.ShardSampler(len(val_set), rank, world)
    workers = min(int(loader.get("num_workers", 0)), math.ceil(len(sampler) / batch_size))
    return DataLoader(val_set, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_samples, pin_memory=device.type == "cuda",
                      worker_init_fn=_ignore_sigint,
                      persistent_workers=bool(loader.get("persistent_workers", False)) and workers > 0)


def _val_evaluator(cfg: dict, num_classes: int) -> EvaluatorSpec:
    """The config's ``val_evaluator`` as an EvaluatorSpec; top-k above the class count is dropped
    (a recipe's top-5 on a 3-class fine-tuning set)."""
    evaluator = cfg.get("val_evaluator") or {"type": "Accuracy", "topk": (1,)}
    if isinstance(evaluator, dict):
        topk = evaluator.get("topk", (1,))
        topk = (topk,) if isinstance(topk, int) else tuple(topk)
        evaluator = {**evaluator, "topk": tuple(k for k in topk if k <= num_classes) or (1,)}
    try:
        return evaluator_spec({"test_evaluator": evaluator}, num_classes)
    except ConfigError as error:
        raise ConfigError(str(error).replace("test_evaluator", "val_evaluator")) from None


def _seed(requested: int | None, configured: int | None, checkpoint: dict | None) -> int:
    """The run's seed: a resumed run's own, else --seed, randomness.seed or a random one (the
    same on every process)."""
    if checkpoint is not None:
        return int(checkpoint["meta"]["seed"])
    if requested is not None:
        return requested
    if configured is not None:
        return int(configured)
    return int(distributed.gather_objects(random.SystemRandom().randrange(2**31))[0])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_process(seed: int, rank: int, checkpoint: dict | None, world: int) -> None:
    """Per-process generators for dropout, drop path and Mixup/CutMix: from the checkpoint when
    resuming with as many processes, else from the seed and the rank."""
    if checkpoint is not None:
        states = checkpoint["rng"]
        if len(states) == world:
            set_rng_state(states[rank])
            return
        logger.warning("the checkpoint was written by %d process(es), this run has %d: random "
                       "streams restart from the seed, so the run will not repeat exactly",
                       len(states), world)
        seed += 1_000_003 * int(checkpoint["iteration"])
    _seed_everything(seed + rank)


def _restore(checkpoint: dict, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any, scaler: torch.amp.GradScaler | None, ema: AveragedModel | None,
             world: int, batch_size: int) -> Progress:
    """Load a training checkpoint into the run's objects and return its counters."""
    try:
        load_into(model, checkpoint["state_dict"])
    except CheckpointMismatchError as error:
        raise CheckpointError(f"cannot resume from {path}: it was written for another model. "
                              f"{error}") from None
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except ValueError as error:
        raise CheckpointError(f"cannot resume from {path}: its optimizer state does not fit this "
                              f"run ({error}); the frozen stages or parameter groups changed. "
                              "Start a new run with load_from instead") from None
    scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    if ema is not None:
        if checkpoint.get("state_dict_ema") is not None:
            ema.module.load_state_dict(checkpoint["state_dict_ema"])
            ema.n_averaged.copy_(checkpoint["ema_n_averaged"])
        else:
            logger.warning("%s has no EMA weights: the average starts from the resumed weights", path)
    meta = checkpoint["meta"]
    epoch_iter = int(checkpoint["epoch_iter"])
    if epoch_iter and (meta.get("world_size") != world or meta.get("batch_size") != batch_size):
        logger.warning("%s was saved in the middle of an epoch by a run with another process "
                       "count or batch size: the epoch restarts from its first batch", path)
        epoch_iter = 0
    return Progress(epoch=int(checkpoint["epoch"]), epoch_iter=epoch_iter,
                    step=int(checkpoint["iteration"]), best=dict(checkpoint.get("best") or {}),
                    last_checkpoint=path)


def _collate_train(items: list[tuple[torch.Tensor, int, list[str]]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images, labels, errors = zip(*items)
    return torch.stack(images), torch.tensor(labels), [e for item in errors for e in item]


def _ignore_sigint(worker_id: int) -> None:
    """Loader workers leave SIGINT (Ctrl-C reaches the whole process group) to the main
    process, which stops cleanly and shuts them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Loop:
    """The epoch loop: training steps, validation, checkpoints and records."""

    def __init__(self, setup: Setup, model: nn.Module, train_model: nn.Module, ddp_model: nn.Module,
                 ema: AveragedModel | None, optimizer: torch.optim.Optimizer, scheduler: Any,
                 scaler: torch.amp.GradScaler | None, batch_augment: BatchAugment | None,
                 train_loader: DataLoader, sampler: TrainSampler, val_loader: DataLoader | None,
                 evaluator: Any, device: torch.device, recorder: TrainRecorder | None,
                 progress: Progress, stop: StopFlag, seed: int, world: int, rank: int,
                 steps_per_epoch: int, batches_per_epoch: int) -> None:
        self.s = setup
        self.model, self.train_model, self.ddp_model, self.ema = model, train_model, ddp_model, ema
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.batch_augment = batch_augment
        self.train_loader, self.sampler, self.val_loader = train_loader, sampler, val_loader
        self.evaluator, self.device, self.recorder = evaluator, device, recorder
        self.progress, self.stop, self.seed = progress, stop, seed
        self.world, self.rank, self.main = world, rank, rank == 0
        self.steps_per_epoch, self.batches_per_epoch = steps_per_epoch, batches_per_epoch
        self.unreadable: set[str] = set()
        self.started = time.perf_counter()
        self.start_step = progress.step

    def train(self) -> None:
        p = self.progress
        if p.epoch >= self.s.max_epochs:
            logger.info("the run already has its %d epochs; nothing to do", self.s.max_epochs)
            return
        while p.epoch < self.s.max_epochs:
            self._train_epoch()
            p.epoch, p.epoch_iter = p.epoch + 1, 0
            epoch = p.epoch
            stopping = self._stop_requested() and epoch < self.s.max_epochs
            metrics = {}
            if (self.val_loader is not None and not stopping and epoch >= self.s.val_begin
                    and (epoch % self.s.val_interval == 0 or epoch == self.s.max_epochs)):
                metrics = self._validate()
            self._save_epoch(metrics)
            if self.recorder is not None:
                self.recorder.plot()
            if stopping or (epoch < self.s.max_epochs and self._stop_requested()):
                self._interrupt()
        if self.main:
            best = p.best
            logger.info("done: %d epochs in %s%s; checkpoints in %s", self.s.max_epochs,
                        timedelta(seconds=round(time.perf_counter() - self.started)),
                        f", best accuracy/top1 {best['accuracy/top1']:.2f} at epoch {best['epoch']}"
                        if best else "", self.s.work_dir)

    # -- training ---------------------------------------------------------------------------
    def _train_epoch(self) -> None:
        p, s = self.progress, self.s
        self.model.train()
        self.sampler.set_epoch(p.epoch)
        self.sampler.set_start(p.epoch_iter * s.batch_size)
        window = torch.zeros(3, dtype=torch.float64)  # loss sum, batches, images since last log
        window_start = time.perf_counter()
        epoch_started = time.perf_counter()
        bar = tqdm(total=self.sampler.num_samples, initial=min(p.epoch_iter * s.batch_size,
                                                               self.sampler.num_samples),
                   unit="img", desc=f"epoch {p.epoch + 1}/{s.max_epochs}", file=sys.stderr,
                   dynamic_ncols=True, disable=not (self.main and sys.stderr.isatty()), leave=False)
        params = [q for q in self.model.parameters() if q.requires_grad]
        with bar:
            for images, labels, errors in self.train_loader:
                self._report_unreadable(errors)
                i = p.epoch_iter
                group_start = i - i % s.accumulation
                group_size = min(s.accumulation, self.batches_per_epoch - group_start)
                last_in_group = i - group_start == group_size - 1
                loss_value = self._forward_backward(images, labels, group_size, last_in_group)
                p.epoch_iter += 1
                window += torch.tensor([loss_value, 1.0, len(images)], dtype=torch.float64)
                bar.update(len(images))
                if not last_in_group:
                    continue
                lr = self.optimizer.param_groups[0]["lr"]
                self._optimizer_step(params)
                p.step += 1
                bar.set_postfix(loss=f"{window[0] / window[1]:.4f}", lr=f"{lr:.2e}", refresh=False)
                last_step = p.epoch_iter == self.batches_per_epoch
                if p.step % s.log_interval == 0 or last_step:
                    window = self._log_train(window, time.perf_counter() - window_start, lr)
                    window_start = time.perf_counter()
                if self._stop_requested():
                    if last_step:
                        break  # the epoch's checkpoint is saved next
                    self._save(f"iter_{p.step}.pth", {})
                    self._interrupt()
                if s.checkpoint_iters and p.step % s.checkpoint_iters == 0 and not last_step:
                    self._save(f"iter_{p.step}.pth", {})
                    if self.main and s.max_keep > 0:
                        prune(s.work_dir, "iter_{}.pth", s.max_keep)
        count = len(set().union(*distributed.gather_objects(self.unreadable)))
        if self.main:
            logger.info("Epoch(train) [%d/%d] done in %s%s", p.epoch + 1, s.max_epochs,
                        timedelta(seconds=round(time.perf_counter() - epoch_started)),
                        f"; {count} unreadable training image(s) skipped so far" if count else "")

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor, group_size: int,
                          last_in_group: bool) -> float:
        images = images.to(self.device, non_blocking=True)
        targets = labels.to(self.device, non_blocking=True)
        if self.batch_augment is not None:
            images, targets = self.batch_augment(images, targets)
        sync = nullcontext() if last_in_group or self.world == 1 else self.ddp_model.no_sync()
        with sync:
            with torch.autocast(self.device.type, dtype=self.s.amp, enabled=self.s.amp is not None):
                logits = self.train_model(images)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.s.label_smoothing)
            value = loss.item()
            if self._any_rank(not math.isfinite(value)):
                self._diverged(value if not math.isfinite(value) else float("nan"))
            loss = loss / group_size
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return value

    def _optimizer_step(self, params: list[nn.Parameter]) -> None:
        if self.scaler is not None:
            if self.s.clip_grad is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params, self.s.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if self.s.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(params, self.s.clip_grad)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def _stop_requested(self) -> bool:
        """Whether any process received SIGINT/SIGTERM (every process must call this together)."""
        stop = self._any_rank(self.stop.signum is not None)
        if stop and self.stop.signum is None:
            self.stop.signum = signal.SIGTERM
        return stop

    def _any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any process (every process must call this together)."""
        if self.world == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def _diverged(self, value: float) -> None:
        p = self.progress
        last = (f"the last good checkpoint is {p.last_checkpoint} (epoch {p.epoch}, kept intact)"
                if p.last_checkpoint else "no checkpoint had been saved yet")
        raise TrainError(
            f"the training loss became {value} at epoch {p.epoch + 1}, batch {p.epoch_iter + 1} "
            f"(step {p.step + 1}); stopping without saving, {last}. Lower the learning rate "
            "(optim_wrapper.optimizer.lr), clip gradients (--clip-grad 1.0), or use --amp bf16 "
            "instead of fp16, then resume with --resume PATH")

    def _report_unreadable(self, errors: list[str]) -> None:
        for error in errors:
            if error not in self.unreadable:
                self.unreadable.add(error)
                logger.warning("skipped an unreadable training image: %s", error)

    def _log_train(self, window: torch.Tensor, seconds: float, lr: float) -> torch.Tensor:
        if self.world > 1:
            window = window.to(self.device)
            torch.distributed.all_reduce(window)
            window = window.cpu()
        loss_sum, batches, images = window.tolist()
        p, s = self.progress, self.s
        loss = loss_sum / max(batches, 1)
        rate = images / max(seconds, 1e-9)
        done = p.step - self.start_step
        remaining = s.max_epochs * self.steps_per_epoch - p.step
        eta = (time.perf_counter() - self.started) / max(done, 1) * remaining
        if self.main:
            logger.info("Epoch(train) [%d/%d][%d/%d]  lr: %.4e  loss: %.4f  images/s: %.1f  eta: %s",
                        p.epoch + 1, s.max_epochs, math.ceil(p.epoch_iter / s.accumulation),
                        self.steps_per_epoch, lr, loss, rate, timedelta(seconds=round(eta)))
            self.recorder.log({"mode": "train", "epoch": p.epoch + 1, "step": p.step, "lr": lr,
                               "loss": loss, "images_per_s": rate, "eta_s": round(eta, 1)})
        return torch.zeros(3, dtype=torch.float64)

    # -- validation ----------------------------------------------------------------------------
    def _validate(self) -> dict[str, float]:
        metrics = self._accuracy(self.model)
        if self.ema is not None:
            metrics.update({f"ema_{k}": v for k, v in self._accuracy(self.ema.module).items()})
        self.model.train()
        if self.main:
            p = self.progress
            logger.info("Epoch(val) [%d/%d]  %s", p.epoch, self.s.max_epochs,
                        "  ".join(f"{k}: {v:.2f}" for k, v in metrics.items()))
            self.recorder.log({"mode": "val", "epoch": p.epoch, "step": p.step, **metrics})
        return metrics

    def _accuracy(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        k = min(max(max(self.evaluator.topk), 5), self.s.spec.num_classes)
        records = predict(model, self.val_loader, self.device, self.s.amp, k, strict=False,
                          progress=False)
        records = [r for part in distributed.gather_objects(records) for r in part]
        if all("error" in r for r in records):
            raise ImageLoadError(f"none of the {len(records)} validation images could be read; "
                                 f"the first error: {records[0]['error']}")
        return accuracy(records, self.evaluator)

    # -- checkpoints ---------------------------------------------------------------------------
    def _save_epoch(self, metrics: dict[str, float]) -> None:
        p, s = self.progress, self.s
        improved = "accuracy/top1" in metrics and metrics["accuracy/top1"] > p.best.get("accuracy/top1", -1.0)
        if improved:
            p.best = {"accuracy/top1": metrics["accuracy/top1"], "epoch": p.epoch}
        periodic = p.epoch % s.checkpoint_interval == 0 or p.epoch == s.max_epochs
        path = self._save(f"epoch_{p.epoch}.pth" if periodic else None, metrics)
        if self.main:
            if improved:
                link_atomic(path, s.work_dir / BEST)
            if periodic and s.max_keep > 0:
                prune(s.work_dir, "epoch_{}.pth", s.max_keep)

    def _save(self, name: str | None, metrics: dict[str, float]) -> Path:
        """Write a checkpoint as ``name`` (and make latest.pth the same file), or straight to
        latest.pth. Every process sends its random states to rank 0, which writes."""
        p, s = self.progress, self.s
        states = distributed.gather_objects(rng_state())
        latest = s.work_dir / LATEST
        path = s.work_dir / name if name else latest
        if self.main:
            checkpoint = {
                "meta": {"seed": self.seed, "world_size": self.world, "batch_size": s.batch_size,
                         "arch": s.spec.arch.to_dict(), "num_classes": s.spec.num_classes,
                         "semantics": s.spec.semantics, "config": format_config(s.cfg),
                         "torch": str(torch.__version__)},
                "state_dict": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "state_dict_ema": self.ema.module.state_dict() if self.ema is not None else None,
                "ema_n_averaged": self.ema.n_averaged if self.ema is not None else None,
                "epoch": p.epoch, "epoch_iter": p.epoch_iter, "iteration": p.step,
                "rng": states, "best": p.best, "metrics": metrics,
            }
            save_atomic(checkpoint, path)
            if path != latest:
                link_atomic(path, latest)
        distributed.barrier()
        p.last_checkpoint = path
        return path

    def _interrupt(self) -> None:
        signum = self.stop.signum or signal.SIGTERM
        if self.main:
            logger.warning("stopped by %s at epoch %d, step %d: saved %s; continue with --resume "
                           "auto (or --resume %s)", signal.Signals(signum).name, self.progress.epoch,
                           self.progress.step, self.progress.last_checkpoint,
                           self.progress.last_checkpoint)
        raise Interrupted(signum)
