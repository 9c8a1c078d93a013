"""Train or fine-tune DaViT from an mmpretrain-style config, as mmpretrain's ``tools/train.py``.

:func:`train` runs the config's recipe: the model (``model``), the training and validation data
(``train_dataloader``, ``val_dataloader``, ``data_preprocessor``), the optimizer and schedule
(``optim_wrapper``, ``param_scheduler``, ``auto_scale_lr``, ``train_cfg``) and the runtime
(``default_hooks``, ``randomness``, ``load_from``, ``resume``). Under
``torchrun --nproc_per_node N`` each process trains a shard of every epoch (DDP: NCCL on GPUs,
gloo on CPUs) and rank 0 writes the logs and checkpoints.

Every epoch the model is validated with the evaluation code of ``tools/test.py`` and a
checkpoint is written atomically (:mod:`.train_checkpoint`), so ``--resume auto`` continues
exactly where the run stopped.
"""
from __future__ import annotations

import logging
import math
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from ..checkpoint.load import load_pretrained
from ..checkpoint.resolve import resolve_weights
from ..config import dump_config, load_config
from ..config.data import (
    batch_augment,
    build_section_dataset,
    loader_section,
    loader_spec,
    test_transform,
    train_transform,
)
from ..config.specs import val_evaluator_spec
from ..config.training import (
    RecipeOverrides,
    RuntimeSpec,
    TrainSpec,
    apply_overrides,
    runtime_spec,
    train_spec,
    with_num_classes,
)
from ..data.datasets import LabelledImageDataset
from ..dtypes import AMP_DTYPES
from ..errors import CheckpointMismatchError, DatasetError, DavitError, InvalidArgumentError, TrainError
from ..model import build_model
from . import distributed
from .optim import build_optimizer, build_scheduler, scaled_lr
from .predict import sharded_loader
from .recorder import TrainRecorder
from .sampling import SeededDataset, TrainSampler, run_seed, seed_everything, seed_process
from .session import TrainSession
from .state import TrainState
from .train_checkpoint import load_training_checkpoint, restore, resume_source, run_meta
from .trainer import TrainData, Trainer, TrainPlan

logger = logging.getLogger("davit")


@dataclass(frozen=True)
class TrainOptions:
    """What to train and how (``tools/train.py``'s options)."""

    config: str
    work_dir: str | None = None
    cfg_options: Sequence[str] = ()
    resume: str | None = None  # "auto" or a checkpoint path
    overrides: RecipeOverrides = field(default_factory=RecipeOverrides)
    compile: bool = False
    seed: int | None = None
    deterministic: bool = False
    device: str | None = None
    checkpoint_iters: int | None = None
    validate: bool = True
    launcher: str | None = None


@dataclass
class _Data:
    """The checked config and the datasets it names."""

    spec: TrainSpec
    train_set: LabelledImageDataset
    val_set: LabelledImageDataset | None


def train(options: TrainOptions, session: TrainSession) -> None:
    """Run the training; raises :class:`~davit.engine.session.Interrupted` after SIGINT/SIGTERM
    (with a checkpoint saved) and :class:`~davit.errors.DavitError` for bad input or a diverged
    loss."""
    if options.launcher == "pytorch" and "WORLD_SIZE" not in os.environ:
        raise InvalidArgumentError("--launcher pytorch needs torchrun: torchrun --nproc_per_node N "
                                   "tools/train.py CONFIG")
    cfg = apply_overrides(load_config(options.config, list(options.cfg_options)), options.overrides)
    runtime = runtime_spec(cfg)
    deterministic = options.deterministic or runtime.deterministic
    _set_determinism(deterministic, runtime.cudnn_benchmark)
    device = distributed.select_device(options.device)
    distributed.init_distributed(device)
    rank, world = distributed.get_rank(), distributed.get_world_size()
    work_dir = Path(options.work_dir or runtime.work_dir or Path("work_dirs") / Path(options.config).stem)
    session.start(work_dir, rank == 0)

    # Rank 0 decides, so that every process resumes from the same file (or none does).
    resume = resume_source(options.resume, runtime.resume, runtime.load_from, work_dir) \
        if rank == 0 else None
    resume = distributed.gather_objects(resume)[0]
    checkpoint = load_training_checkpoint(resume) if resume else None

    data = _datasets(cfg, options.validate)
    seed = run_seed(options.seed, runtime.seed, checkpoint)
    seed_everything(seed)
    cfg = {**data.spec.cfg, "randomness": {**(cfg.get("randomness") or {}), "seed": seed,
                                            "deterministic": deterministic}}
    state, plan = _build_state(data, runtime, options, device, work_dir, seed, cfg,
                               load_weights=checkpoint is None)
    if checkpoint is not None and resume is not None:
        restore(checkpoint, resume, state, world, plan.batch_size)
    seed_process(seed, rank, checkpoint, world)
    loaders = _loaders(data, plan, seed)
    if world > 1:
        state.ddp = DistributedDataParallel(state.model, device_ids=[device] if device.type == "cuda" else None)
        state.forward = state.ddp
    if options.compile:
        state.forward = cast(nn.Module, torch.compile(state.forward))

    recorder = TrainRecorder(work_dir, state.step if checkpoint is not None else None) \
        if rank == 0 else None
    if rank == 0:
        original = load_config(options.config, [])
        dump_config(as_run_config(cfg, original, plan.num_classes, runtime.load_from),
                    work_dir / Path(options.config).name)
        _log_start(options, data, plan, state, resume if checkpoint is not None else None)
    try:
        Trainer(state, plan, loaders, recorder, session.stop).train()
    finally:
        if recorder is not None:
            recorder.close()


def _set_determinism(deterministic: bool, cudnn_benchmark: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = cudnn_benchmark


def _datasets(cfg: dict, validate: bool) -> _Data:
    """The training set first (a fine-tuning config may take its class count from the training
    folders), then the rest of the recipe and the validation set."""
    loader_section(cfg, "train_dataloader")
    head = (cfg.get("model") or {}).get("head") or {}
    train_set = build_section_dataset(cfg, "train_dataloader", train_transform(cfg),
                                      head.get("num_classes"))
    if head.get("num_classes") is None:
        logger.info("model.head.num_classes is None: using the %d classes of the training set",
                    len(train_set.classes or []))
    spec = train_spec(with_num_classes(cfg, len(train_set.classes or [])))
    val_set = None
    if validate and cfg.get("val_dataloader") is not None:
        loader_section(cfg, "val_dataloader")
        transform = test_transform(cfg, "val_dataloader")
        val_set = build_section_dataset(cfg, "val_dataloader", transform, spec.model.num_classes)
        if val_set.classes and train_set.classes and val_set.classes != train_set.classes:
            only_val = sorted(set(val_set.classes) - set(train_set.classes))
            only_train = sorted(set(train_set.classes) - set(val_set.classes))
            raise DatasetError(
                f"the validation class folders of {val_set.source} differ from the training "
                f"ones of {train_set.source}: only in validation: {_names(only_val)}; only in "
                f"training: {_names(only_train)}; labels follow the sorted folder names, so "
                "both need the same folders")
    return _Data(spec, train_set, val_set)


def _names(names: Sequence[str], shown: int = 10) -> str:
    if not names:
        return "none (the same names in another order)"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


DATA_KEYS = ("data_root", "ann_file", "data_prefix", "split")


def as_run_config(cfg: dict, original: dict, num_classes: int, load_from: object) -> dict:
    """The config as run, which training saves in its work dir so that ``tools/test.py
    <work_dir>/<config>.py <work_dir>/best.pth`` evaluates the trained model on the user's data:

    * the class count actually used is written into ``model.head.num_classes`` and every other
      ``num_classes`` of the config (``data_preprocessor``, ``model.data_preprocessor``);
    * ``load_from`` is the value actually used (None when training from random weights);
    * ``test_dataloader`` follows ``val_dataloader`` (mmpretrain's convention for custom data,
      ``test_dataloader = val_dataloader``) when, in the config as written (``original``, without
      --cfg-options), the test set was the validation set, the options changed the validation
      set's data keys (data_root, ann_file, data_prefix, split) and left the test set's alone.
    """
    cfg = dict(cfg)
    model = dict(cfg.get("model") or {})
    head = dict(model.get("head") or {})
    if head:
        head["num_classes"] = num_classes
        model["head"] = head
    if isinstance(model.get("data_preprocessor"), dict) and "num_classes" in model["data_preprocessor"]:
        model["data_preprocessor"] = {**model["data_preprocessor"], "num_classes": num_classes}
    if model:
        cfg["model"] = model
    if isinstance(cfg.get("data_preprocessor"), dict) and "num_classes" in cfg["data_preprocessor"]:
        cfg["data_preprocessor"] = {**cfg["data_preprocessor"], "num_classes": num_classes}
    cfg["load_from"] = load_from or None

    def dataset(config: dict, section: str) -> dict:
        loader = config.get(section)
        value = loader.get("dataset") if isinstance(loader, dict) else None
        return value if isinstance(value, dict) else {}

    def data_keys(config: dict, section: str) -> dict:
        return {key: dataset(config, section).get(key) for key in DATA_KEYS}

    val, test = data_keys(cfg, "val_dataloader"), data_keys(cfg, "test_dataloader")
    was_val, was_test = data_keys(original, "val_dataloader"), data_keys(original, "test_dataloader")
    if (dataset(cfg, "test_dataloader") and was_test == was_val and test == was_test
            and val != was_val):
        test_loader = dict(cfg["test_dataloader"])
        test_loader["dataset"] = {**test_loader["dataset"],
                                  **{k: v for k, v in dataset(cfg, "val_dataloader").items()
                                     if k in DATA_KEYS}}
        cfg["test_dataloader"] = test_loader
    return cfg


def _build_state(data: _Data, runtime: RuntimeSpec, options: TrainOptions, device: torch.device,
                 work_dir: Path, seed: int, cfg: dict,
                 load_weights: bool) -> tuple[TrainState, TrainPlan]:
    """The model (with ``load_from``'s weights unless resuming), EMA, optimizer, schedule and
    gradient scaler, and the plan of the run."""
    spec, world, rank = data.spec, distributed.get_world_size(), distributed.get_rank()
    model = build_model(spec.model.arch, spec.model.num_classes, spec.model.semantics, **spec.model.backbone_options)
    if load_weights and runtime.load_from:
        with distributed.main_process_first():
            try:
                load_pretrained(model, resolve_weights(runtime.load_from), progress=rank == 0)
            except CheckpointMismatchError as error:
                raise TrainError(f"load_from={runtime.load_from!r} does not fit the configured "
                                 f"model: {error}") from None
            except DavitError as error:
                raise TrainError(f"cannot load load_from={runtime.load_from!r}: "
                                 f"{' '.join(str(error).split())}; to train from random weights "
                                 "instead pass --cfg-options load_from=None") from None
        logger.info("loaded the weights of %s (load_from)", runtime.load_from)
    elif load_weights and rank == 0:
        logger.warning("load_from is not set: training starts from random weights; to fine-tune "
                       "pretrained weights set load_from (--cfg-options load_from=NAME_OR_PATH, "
                       "names: davit list --pretrained)")
    model.to(device)
    ema = None
    if runtime.ema_decay is not None:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(runtime.ema_decay), use_buffers=True)

    batch_size, accumulation = spec.loader.batch_size, spec.optim.accumulation
    lr = scaled_lr(spec.optim.optim_wrapper, spec.optim.auto_scale_lr, batch_size * world * accumulation)
    optimizer = build_optimizer(model, spec.optim.optim_wrapper, lr)
    per_process = math.ceil(len(data.train_set) / world)  # as DistributedSampler pads
    if batch_size > per_process:
        raise TrainError(
            f"train_dataloader.batch_size is {batch_size} but the training set has only "
            f"{len(data.train_set)} images ({per_process} per process); lower it, e.g. "
            f"--cfg-options train_dataloader.batch_size={per_process}")
    batches_per_epoch = math.ceil(per_process / batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / accumulation)
    scheduler = build_scheduler(optimizer, spec.optim.param_scheduler, steps_per_epoch,
                                runtime.max_epochs, lr)
    amp = AMP_DTYPES[spec.optim.amp] if spec.optim.amp else None
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    plan = TrainPlan(
        runtime=runtime, work_dir=work_dir, device=device, world=world, rank=rank,
        batch_size=batch_size, accumulation=accumulation, clip_grad=spec.optim.clip_grad,
        label_smoothing=spec.label_smoothing, amp=amp, num_classes=spec.model.num_classes,
        steps_per_epoch=steps_per_epoch, batches_per_epoch=batches_per_epoch,
        checkpoint_iters=options.checkpoint_iters,
        meta=run_meta(seed, world, batch_size, spec.model, cfg, data.train_set.classes))
    return TrainState(model, optimizer, scheduler, scaler, ema), plan


def _loaders(data: _Data, plan: TrainPlan, seed: int) -> TrainData:
    """The training loader (seeded draws, this process's shard) and the validation loader."""
    sampler = TrainSampler(data.train_set, plan.world, plan.rank, seed)
    loader = data.spec.loader
    train_loader = DataLoader(
        SeededDataset(data.train_set), batch_size=loader.batch_size, sampler=sampler,
        num_workers=loader.num_workers, collate_fn=_collate_train,
        pin_memory=plan.device.type == "cuda", worker_init_fn=_ignore_sigint,
        persistent_workers=loader.persistent_workers and loader.num_workers > 0,
        generator=torch.Generator().manual_seed(seed))
    cfg = data.spec.cfg
    augment = batch_augment(cfg, plan.num_classes)
    if data.val_set is None:
        return TrainData(train_loader, sampler, augment, None, None)
    val = loader_spec(cfg["val_dataloader"], "val_dataloader")
    val_loader = sharded_loader(data.val_set, len(data.val_set), val.batch_size, val.num_workers,
                                plan.device, val.persistent_workers, _ignore_sigint)
    return TrainData(train_loader, sampler, augment, val_loader,
                     val_evaluator_spec(cfg, plan.num_classes))


def _collate_train(items: list[tuple[torch.Tensor, int, list[str]]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images, labels, errors = zip(*items)
    return torch.stack(images), torch.tensor(labels), [e for item in errors for e in item]


def _ignore_sigint(worker_id: int) -> None:
    """Loader workers leave SIGINT (Ctrl-C reaches the whole process group) to the main
    process, which stops cleanly and shuts them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _log_start(options: TrainOptions, data: _Data, plan: TrainPlan, state: TrainState,
               resumed: Path | None) -> None:
    model = state.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lr = state.optimizer.defaults["lr"]
    logger.info("training %s: %d parameters (%d trainable), %d classes, %d training images%s, "
                "%d process(es) on %s, %d images per step (lr %.3g), %d epochs of %d steps; "
                "work dir %s", Path(options.config).name, sum(p.numel() for p in model.parameters()),
                trainable, plan.num_classes, len(data.train_set),
                f", {len(data.val_set)} validation images" if data.val_set is not None else "",
                plan.world, plan.device.type, plan.batch_size * plan.world * plan.accumulation, lr,
                plan.runtime.max_epochs, plan.steps_per_epoch, plan.work_dir)
    if resumed is not None:
        logger.info("resumed from %s at epoch %d, step %d", resumed, state.epoch, state.step)
