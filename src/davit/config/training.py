"""The training recipe a config asks for: loss, optimiser and schedule, and the runtime.

Command-line options that stand for config values (``--accumulate``, ``--ema``, ...) are merged
into the config first (:func:`apply_overrides`), so the config dumped into the work dir shows the
values the run used; the specs are then read from that one dict.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .data import LoaderSpec, loader_section, loader_spec
from .specs import ModelSpec, model_spec
from .values import flag, integer, number, subsection

TRAIN_CFG_KEYS = {"type", "by_epoch", "max_epochs", "val_interval", "val_begin"}
OPTIM_WRAPPER_KEYS = {"type", "optimizer", "paramwise_cfg", "clip_grad", "accumulative_counts",
                      "dtype", "loss_scale"}


@dataclass(frozen=True)
class RecipeOverrides:
    """Command-line options that replace config values."""

    grad_checkpointing: bool = False
    accumulate: int | None = None
    clip_grad: float | None = None
    amp: str | None = None  # "fp16" or "bf16"
    ema: float | None = None  # the decay


@dataclass(frozen=True)
class OptimSpec:
    """``optim_wrapper``, ``param_scheduler`` and ``auto_scale_lr``, as :mod:`davit.engine.optim`
    reads them, with the training-step options already checked."""

    optim_wrapper: dict
    param_scheduler: list | dict | None
    auto_scale_lr: dict | None
    clip_grad: float | None
    accumulation: int
    amp: str | None  # "fp16", "bf16" or None


@dataclass(frozen=True)
class RuntimeSpec:
    """``train_cfg``, ``default_hooks``, ``custom_hooks`` (EMA), ``randomness``, ``env_cfg``,
    ``load_from``, ``resume`` and ``work_dir``."""

    max_epochs: int
    val_interval: int
    val_begin: int
    checkpoint_interval: int
    #: ``default_hooks.checkpoint.max_keep_ckpts``: how many ``epoch_N.pth`` to keep; -1 keeps
    #: all, and the default 0 (when the config does not set it, or sets None) keeps none: the work dir then
    #: holds only ``latest.pth`` (resumable) and ``best.pth`` (weights), as each epoch file of
    #: DaViT-T is 331 MB.
    max_keep: int
    #: ``default_hooks.checkpoint.save_best``: the metric ``best.pth`` tracks ('auto' is
    #: accuracy/top1), or None for no ``best.pth``.
    save_best: str | None
    log_interval: int
    ema_decay: float | None
    seed: int | None
    deterministic: bool
    cudnn_benchmark: bool
    load_from: str | None
    resume: Any
    work_dir: str | None


@dataclass(frozen=True)
class TrainSpec:
    """What a training config asks for once the class count is known."""

    cfg: dict
    model: ModelSpec
    loader: LoaderSpec
    label_smoothing: float
    optim: OptimSpec


def apply_overrides(cfg: dict, overrides: RecipeOverrides) -> dict:
    """A copy of ``cfg`` with the command-line options written into the keys they stand for."""
    cfg = dict(cfg)
    if overrides.grad_checkpointing:
        model_cfg = dict(cfg.get("model") or {})
        model_cfg["backbone"] = {**(model_cfg.get("backbone") or {}), "grad_checkpointing": True}
        cfg["model"] = model_cfg
    optim_wrapper = dict(cfg.get("optim_wrapper") or {})
    if overrides.accumulate is not None:
        optim_wrapper["accumulative_counts"] = overrides.accumulate
    if overrides.clip_grad is not None:
        optim_wrapper["clip_grad"] = {"max_norm": overrides.clip_grad}
    if overrides.amp is not None:
        optim_wrapper.update(type="AmpOptimWrapper",
                             dtype="bfloat16" if overrides.amp == "bf16" else "float16")
    cfg["optim_wrapper"] = optim_wrapper
    if overrides.ema is not None:
        hooks = [h for h in cfg.get("custom_hooks") or [] if h.get("type") != "EMAHook"]
        cfg["custom_hooks"] = [*hooks, {"type": "EMAHook", "momentum": 1.0 - overrides.ema}]
    return cfg


def with_num_classes(cfg: dict, num_classes: int) -> dict:
    """``cfg`` with ``model.head.num_classes`` set to ``num_classes`` where it is None (a
    fine-tuning config that takes the class count from the training folders)."""
    model_cfg = dict(cfg.get("model") or {})
    head = dict(model_cfg.get("head") or {})
    if head.get("num_classes") is not None:
        return cfg
    head["num_classes"] = num_classes
    return {**cfg, "model": {**model_cfg, "head": head}}


def runtime_spec(cfg: dict) -> RuntimeSpec:
    """Check the config's epoch loop, hooks and randomness."""
    train_cfg = subsection(cfg, "train_cfg")
    if set(train_cfg) - TRAIN_CFG_KEYS or not flag(train_cfg, "by_epoch", "train_cfg", True):
        raise ConfigError(f"train_cfg supports epoch-based training ({sorted(TRAIN_CFG_KEYS)}), "
                          f"got {train_cfg}")
    hooks = subsection(cfg, "default_hooks")
    checkpoint_hook = subsection(hooks, "checkpoint", "default_hooks")
    logger_hook = subsection(hooks, "logger", "default_hooks")
    randomness = subsection(cfg, "randomness")
    seed = randomness.get("seed")
    return RuntimeSpec(
        max_epochs=integer(train_cfg, "max_epochs", "train_cfg", minimum=1),
        val_interval=integer(train_cfg, "val_interval", "train_cfg", 1, minimum=1),
        val_begin=integer(train_cfg, "val_begin", "train_cfg", 1, minimum=0),
        checkpoint_interval=integer(checkpoint_hook, "interval", "default_hooks.checkpoint", 1, minimum=1),
        max_keep=0 if checkpoint_hook.get("max_keep_ckpts") is None else
        integer(checkpoint_hook, "max_keep_ckpts", "default_hooks.checkpoint", minimum=-1),
        save_best=_save_best(checkpoint_hook),
        log_interval=integer(logger_hook, "interval", "default_hooks.logger", 50, minimum=1),
        ema_decay=_ema_decay(cfg),
        seed=None if seed is None else integer(randomness, "seed", "randomness", minimum=0),
        deterministic=flag(randomness, "deterministic", "randomness", False),
        cudnn_benchmark=flag(subsection(cfg, "env_cfg"), "cudnn_benchmark", "env_cfg", False),
        load_from=_text(cfg, "load_from"), resume=_resume(cfg), work_dir=_text(cfg, "work_dir"))


BEST_METRICS = ("accuracy/top1", "accuracy/top5")


def _save_best(hook: dict) -> str | None:
    """``save_best``: 'auto' (the default, accuracy/top1), a metric name, or None/False."""
    value = hook.get("save_best", "auto")
    if value in (None, False, ""):
        return None
    if value == "auto":
        return BEST_METRICS[0]
    if value not in BEST_METRICS:
        raise ConfigError(f"default_hooks.checkpoint.save_best must be 'auto', None or one of "
                          f"{', '.join(BEST_METRICS)}, got {value!r}")
    return str(value)


def _text(cfg: dict, key: str) -> str | None:
    """A path setting: a string, or None when empty."""
    value = cfg.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{key} must be a path or None, got {value!r}")
    return value or None


def _resume(cfg: dict) -> bool | str:
    """``resume``: True, False (or None), 'auto' or a checkpoint path."""
    value = cfg.get("resume") or False
    if not isinstance(value, (bool, str)):
        raise ConfigError(f"resume must be True, False, 'auto' or a checkpoint path, got {value!r}")
    return value


def _ema_decay(cfg: dict) -> float | None:
    decay = None
    for hook in cfg.get("custom_hooks") or []:
        if hook.get("type") != "EMAHook" or set(hook) - {"type", "momentum", "priority"}:
            raise ConfigError(f"custom_hooks: {hook!r} is not supported; only "
                              "dict(type='EMAHook', momentum=...) is")
        momentum = number(hook, "momentum", "custom_hooks.EMAHook", 0.0002, positive=True, below=1.0)
        decay = 1.0 - momentum
    return decay


def train_spec(cfg: dict) -> TrainSpec:
    """Check the model, loss, training loader and optimiser of a config whose class count is
    known (see :func:`with_num_classes`)."""
    model_cfg = cfg.get("model") or {}
    spec = model_spec(model_cfg)
    loader = loader_spec(loader_section(cfg, "train_dataloader"), "train_dataloader", None)
    smoothing = label_smoothing((model_cfg.get("head") or {}).get("loss"))
    return TrainSpec(cfg, spec, loader, smoothing, optim_spec(cfg))


def label_smoothing(loss_cfg: dict | None) -> float:
    """The label smoothing of ``model.head.loss`` (LabelSmoothLoss or CrossEntropyLoss)."""
    loss = dict(loss_cfg or {"type": "CrossEntropyLoss"})
    if number(loss, "loss_weight", "model.head.loss", 1.0) != 1.0:
        raise ConfigError("model.head.loss.loss_weight other than 1.0 is not supported; scale the "
                          "learning rate instead")
    loss.pop("loss_weight", None)
    if loss.get("type") == "LabelSmoothLoss":
        if loss.get("mode", "original") != "original" or set(loss) - {"type", "label_smooth_val", "mode"}:
            raise ConfigError("model.head.loss: LabelSmoothLoss is supported with mode='original'")
        return number(loss, "label_smooth_val", "model.head.loss", 0.1, minimum=0.0, below=1.0)
    if loss == {"type": "CrossEntropyLoss"}:
        return 0.0
    raise ConfigError(f"model.head.loss {loss!r} is not supported; use LabelSmoothLoss or "
                      "CrossEntropyLoss")


def optim_spec(cfg: dict) -> OptimSpec:
    """Check ``optim_wrapper`` (OptimWrapper or AmpOptimWrapper) and its training-step options."""
    optim_wrapper = dict(cfg.get("optim_wrapper") or {})
    kind = optim_wrapper.get("type", "OptimWrapper")
    unknown = sorted(set(optim_wrapper) - OPTIM_WRAPPER_KEYS)
    if unknown or kind not in ("OptimWrapper", "AmpOptimWrapper"):
        raise ConfigError(f"optim_wrapper {kind} with options {unknown} is not supported; use "
                          "OptimWrapper or AmpOptimWrapper (dtype float16 or bfloat16)")
    clip_grad, accumulation = _step_options(optim_wrapper)
    _check_optimizer(optim_wrapper)
    _check_schedule(cfg.get("param_scheduler"))
    auto_scale_lr = subsection(cfg, "auto_scale_lr")
    if flag(auto_scale_lr, "enable", "auto_scale_lr", True) and auto_scale_lr:
        integer(auto_scale_lr, "base_batch_size", "auto_scale_lr", minimum=1)
    amp = None
    if kind == "AmpOptimWrapper":
        amp = "bf16" if optim_wrapper.get("dtype") in ("bfloat16", "bf16") else "fp16"
    return OptimSpec(optim_wrapper, cfg.get("param_scheduler"), cfg.get("auto_scale_lr"),
                     clip_grad, accumulation, amp)


def _step_options(optim_wrapper: dict) -> tuple[float | None, int]:
    """Gradient clipping (``clip_grad=dict(max_norm=...)``) and accumulation
    (``accumulative_counts``) from ``optim_wrapper``."""
    clip = optim_wrapper.get("clip_grad")
    max_norm = None
    if clip is not None:
        unknown = sorted(set(clip) - {"max_norm", "norm_type", "type"})
        if unknown or clip.get("norm_type", 2) != 2 or clip.get("type", "norm") != "norm":
            raise ConfigError("optim_wrapper.clip_grad supports dict(max_norm=...) (the L2 norm "
                              "of all gradients) only")
        max_norm = number(clip, "max_norm", "optim_wrapper.clip_grad", positive=True)
    return max_norm, integer(optim_wrapper, "accumulative_counts", "optim_wrapper", 1, minimum=1)


def _check_optimizer(optim_wrapper: dict) -> None:
    """The numbers of ``optim_wrapper.optimizer`` and ``paramwise_cfg``."""
    optimizer, where = subsection(optim_wrapper, "optimizer", "optim_wrapper"), "optim_wrapper.optimizer"
    number(optimizer, "lr", where, positive=True)
    for key in ("weight_decay", "momentum"):
        if key in optimizer:
            number(optimizer, key, where, minimum=0.0)
    if "eps" in optimizer:
        number(optimizer, "eps", where, positive=True)
    betas = optimizer.get("betas", (0.9, 0.999))
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise ConfigError(f"{where}.betas must be two numbers in [0, 1), got {betas!r}")
    for i in range(2):
        number(dict(enumerate(betas)), i, f"{where}.betas", minimum=0.0, below=1.0)
    paramwise = subsection(optim_wrapper, "paramwise_cfg", "optim_wrapper")
    for key in ("norm_decay_mult", "bias_decay_mult", "flat_decay_mult"):
        if paramwise.get(key) is not None:
            number(paramwise, key, "optim_wrapper.paramwise_cfg", minimum=0.0)
    for name, custom in subsection(paramwise, "custom_keys", "optim_wrapper.paramwise_cfg").items():
        for key in ("decay_mult", "lr_mult"):
            if isinstance(custom, dict) and key in custom:
                number(custom, key, f"optim_wrapper.paramwise_cfg.custom_keys.{name}", minimum=0.0)


def _check_schedule(phases: Any) -> None:
    """The numbers of each ``param_scheduler`` phase."""
    for i, phase in enumerate([phases] if isinstance(phases, dict) else phases or []):
        where = f"param_scheduler.{i}"
        if not isinstance(phase, dict):
            raise ConfigError(f"{where} must be a dict, got {phase!r}")
        for key in ("begin", "end"):
            if key in phase:
                integer(phase, key, where, minimum=0)
        for key in ("start_factor", "end_factor", "eta_min", "eta_min_ratio"):
            if phase.get(key) is not None:
                number(phase, key, where, minimum=0.0)
        for key in ("by_epoch", "convert_to_iter_based"):
            flag(phase, key, where, key == "by_epoch")
