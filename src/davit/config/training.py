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
    max_keep: int
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
    train_cfg = dict(cfg.get("train_cfg") or {})
    if set(train_cfg) - TRAIN_CFG_KEYS or not train_cfg.get("by_epoch", True):
        raise ConfigError(f"train_cfg supports epoch-based training ({sorted(TRAIN_CFG_KEYS)}), "
                          f"got {train_cfg}")
    max_epochs = train_cfg.get("max_epochs")
    if not isinstance(max_epochs, int) or max_epochs < 1:
        raise ConfigError(f"train_cfg.max_epochs must be a positive integer, got {max_epochs!r}")
    hooks = cfg.get("default_hooks") or {}
    checkpoint_hook, logger_hook = hooks.get("checkpoint") or {}, hooks.get("logger") or {}
    randomness = cfg.get("randomness") or {}
    seed = randomness.get("seed")
    return RuntimeSpec(
        max_epochs=max_epochs, val_interval=_int(train_cfg, "val_interval", 1, "train_cfg"),
        val_begin=_int(train_cfg, "val_begin", 1, "train_cfg"),
        checkpoint_interval=_int(checkpoint_hook, "interval", 1, "default_hooks.checkpoint"),
        max_keep=_int(checkpoint_hook, "max_keep_ckpts", -1, "default_hooks.checkpoint"),
        log_interval=_int(logger_hook, "interval", 50, "default_hooks.logger"),
        ema_decay=_ema_decay(cfg), seed=None if seed is None else _int(randomness, "seed", 0, "randomness"),
        deterministic=bool(randomness.get("deterministic", False)),
        cudnn_benchmark=bool((cfg.get("env_cfg") or {}).get("cudnn_benchmark", False)),
        load_from=cfg.get("load_from") or None, resume=cfg.get("resume", False),
        work_dir=cfg.get("work_dir") or None)


def _int(section: dict, key: str, default: int, where: str) -> int:
    """``section[key]`` (or ``default``) as an int; a config error names ``where.key``."""
    value = section.get(key, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}.{key} must be an integer, got {value!r}") from None


def _ema_decay(cfg: dict) -> float | None:
    decay = None
    for hook in cfg.get("custom_hooks") or []:
        if hook.get("type") != "EMAHook" or set(hook) - {"type", "momentum", "priority"}:
            raise ConfigError(f"custom_hooks: {hook!r} is not supported; only "
                              "dict(type='EMAHook', momentum=...) is")
        momentum = hook.get("momentum", 0.0002)
        if not isinstance(momentum, (int, float)) or not 0.0 < 1.0 - momentum < 1.0:
            raise ConfigError(f"EMAHook momentum must be between 0 and 1, got {momentum!r}")
        decay = 1.0 - float(momentum)
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
    if loss.pop("loss_weight", 1.0) != 1.0:
        raise ConfigError("model.head.loss.loss_weight other than 1.0 is not supported; scale the "
                          "learning rate instead")
    if loss.get("type") == "LabelSmoothLoss":
        if loss.get("mode", "original") != "original" or set(loss) - {"type", "label_smooth_val", "mode"}:
            raise ConfigError("model.head.loss: LabelSmoothLoss is supported with mode='original'")
        return float(loss.get("label_smooth_val", 0.1))
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
        max_norm = float(clip["max_norm"])
        if max_norm <= 0:
            raise ConfigError(f"optim_wrapper.clip_grad.max_norm must be positive, got {max_norm}")
    counts = optim_wrapper.get("accumulative_counts", 1)
    if not isinstance(counts, int) or counts < 1:
        raise ConfigError(f"optim_wrapper.accumulative_counts must be a positive integer, got {counts!r}")
    return max_norm, counts
