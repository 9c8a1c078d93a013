"""Optimizer, parameter-wise weight decay and learning-rate schedule from an mmpretrain config.

``optim_wrapper`` gives the optimizer (``AdamW`` or ``SGD``) and ``paramwise_cfg`` (weight-decay
multipliers for norms, biases, 1-D parameters and ``custom_keys``); ``param_scheduler`` a list of
``LinearLR`` / ``CosineAnnealingLR`` phases (mmengine's semantics), run here as one closed-form
factor per optimizer step. The step options (``clip_grad``, ``accumulative_counts``, AMP) are
checked by :func:`davit.config.training.optim_spec`.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

_OPTIMIZERS = {"AdamW": torch.optim.AdamW, "SGD": torch.optim.SGD}
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def scaled_lr(optim_wrapper: dict, auto_scale_lr: dict | None, total_batch: int) -> float:
    """The optimizer's learning rate, scaled linearly from ``auto_scale_lr.base_batch_size`` to
    ``total_batch`` (images per optimizer step over all processes) unless
    ``auto_scale_lr.enable`` is False."""
    lr = float(optim_wrapper.get("optimizer", {}).get("lr", 0.0))
    if not auto_scale_lr or not auto_scale_lr.get("enable", True):
        return lr
    base = auto_scale_lr.get("base_batch_size")
    if not isinstance(base, int) or base < 1:
        raise ConfigError(f"auto_scale_lr.base_batch_size must be a positive integer, got {base!r}")
    return lr * total_batch / base


def param_groups(model: nn.Module, weight_decay: float, lr: float,
                 paramwise_cfg: dict | None) -> list[dict[str, Any]]:
    """Parameter groups with mmengine's ``paramwise_cfg`` multipliers.

    ``norm_decay_mult`` applies to normalisation layers' weights and biases, ``bias_decay_mult``
    to other biases, ``flat_decay_mult`` to other 1-D parameters; a ``custom_keys`` entry whose
    key is part of a parameter's name sets its ``decay_mult`` and ``lr_mult`` (the longest
    matching key wins, and it takes precedence). Frozen parameters are left out.
    """
    cfg = dict(paramwise_cfg or {})
    custom = cfg.pop("custom_keys", {}) or {}
    norm_mult = cfg.pop("norm_decay_mult", None)
    bias_mult = cfg.pop("bias_decay_mult", None)
    flat_mult = cfg.pop("flat_decay_mult", None)
    if cfg:
        raise ConfigError(f"optim_wrapper.paramwise_cfg options {sorted(cfg)} are not supported; "
                          "supported: norm_decay_mult, bias_decay_mult, flat_decay_mult, custom_keys")
    for key, value in custom.items():
        unknown = sorted(set(value) - {"decay_mult", "lr_mult"})
        if unknown:
            raise ConfigError(f"paramwise_cfg.custom_keys[{key!r}]: {unknown} not supported; "
                              "use decay_mult and lr_mult")
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORMS)
                   for p in m.parameters(recurse=False)}
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay_mult, lr_mult = 1.0, 1.0
        matches = sorted((k for k in custom if k in name), key=len)
        if matches:
            decay_mult = custom[matches[-1]].get("decay_mult", 1.0)
            lr_mult = custom[matches[-1]].get("lr_mult", 1.0)
        elif id(param) in norm_params and norm_mult is not None:
            decay_mult = norm_mult
        elif name.endswith(".bias") and bias_mult is not None:
            decay_mult = bias_mult
        elif param.ndim == 1 and flat_mult is not None:
            decay_mult = flat_mult
        groups.setdefault((weight_decay * decay_mult, lr * lr_mult), []).append(param)
    return [{"params": params, "weight_decay": wd, "lr": group_lr}
            for (wd, group_lr), params in groups.items()]


def build_optimizer(model: nn.Module, optim_wrapper: dict, lr: float) -> torch.optim.Optimizer:
    """The optimizer ``optim_wrapper.optimizer`` describes, at learning rate ``lr``."""
    options = dict(optim_wrapper.get("optimizer") or {})
    kind = options.pop("type", None)
    if kind not in _OPTIMIZERS:
        raise ConfigError(f"optim_wrapper.optimizer.type must be one of {sorted(_OPTIMIZERS)}, "
                          f"got {kind!r}")
    options.pop("lr", None)
    weight_decay = float(options.pop("weight_decay", 0.0))
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    groups = param_groups(model, weight_decay, lr, optim_wrapper.get("paramwise_cfg"))
    if not groups:
        raise ConfigError("the model has no trainable parameters; lower model.backbone.frozen_stages")
    try:
        return _OPTIMIZERS[kind](groups, lr=lr, **options)
    except TypeError as error:
        raise ConfigError(f"optim_wrapper.optimizer: {error}") from None


class LRSchedule:
    """The factor by which each parameter group's base learning rate is multiplied at a given
    optimizer step, from mmengine ``param_scheduler`` phases.

    ``LinearLR`` goes from ``start_factor`` to ``end_factor`` over ``[begin, end)``;
    ``CosineAnnealingLR`` from 1 down to ``eta_min`` (absolute, or ``eta_min_ratio`` of the base
    rate) over ``[begin, end)``. ``begin``/``end`` are epochs when ``by_epoch`` (the default) and
    steps otherwise; an epoch-based phase changes every step when ``convert_to_iter_based`` and
    at epoch starts otherwise. After a phase ends its last factor holds. Phases must not overlap.
    Instances hold plain numbers only, so ``LambdaLR.state_dict()`` stores them.
    """

    def __init__(self, phases: list[dict], steps_per_epoch: int, max_epochs: int, base_lr: float) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.phases: list[dict[str, Any]] = []
        for i, phase in enumerate(phases):
            o = dict(phase)
            kind = o.pop("type", None)
            by_epoch = o.pop("by_epoch", True)
            per_step = o.pop("convert_to_iter_based", False) or not by_epoch
            scale = steps_per_epoch if by_epoch else 1
            begin = o.pop("begin", 0) * scale
            end = o.pop("end", max_epochs if by_epoch else max_epochs * steps_per_epoch) * scale
            if kind == "LinearLR":
                start, stop = float(o.pop("start_factor", 1 / 3)), float(o.pop("end_factor", 1.0))
            elif kind == "CosineAnnealingLR":
                eta_min, ratio = o.pop("eta_min", None), o.pop("eta_min_ratio", None)
                o.pop("T_max", None)
                floor = ratio if ratio is not None else (eta_min or 0.0) / base_lr if base_lr else 0.0
                start, stop = 1.0, float(floor)
            else:
                raise ConfigError(f"param_scheduler[{i}]: type {kind!r} is not supported; use "
                                  "LinearLR or CosineAnnealingLR")
            if o:
                raise ConfigError(f"param_scheduler[{i}] ({kind}): options {sorted(o)} are not supported")
            if begin >= max_epochs * steps_per_epoch:
                continue  # a phase that training never reaches (a shortened run)
            if end <= begin:
                raise ConfigError(f"param_scheduler[{i}] ({kind}) ends before it begins "
                                  f"(begin={phase.get('begin', 0)}, end={phase.get('end')})")
            if self.phases and begin < self.phases[-1]["end"]:
                raise ConfigError(f"param_scheduler[{i}] overlaps the phase before it; give each "
                                  "phase its own begin..end range")
            self.phases.append({"kind": kind, "begin": begin, "end": end, "start": start,
                                "stop": stop, "per_step": per_step})

    def __call__(self, step: int) -> float:
        factor = 1.0
        for phase in self.phases:
            if step < phase["begin"]:
                break
            position = step if phase["per_step"] else step - step % self.steps_per_epoch
            t = min(1.0, (position - phase["begin"]) / (phase["end"] - phase["begin"]))
            if phase["kind"] == "LinearLR":
                factor = phase["start"] + (phase["stop"] - phase["start"]) * t
            else:
                factor = phase["stop"] + (1.0 - phase["stop"]) * (1 + math.cos(math.pi * t)) / 2
        return factor


def build_scheduler(optimizer: torch.optim.Optimizer, phases: list[dict] | dict | None,
                    steps_per_epoch: int, max_epochs: int,
                    base_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per optimizer step, following :class:`LRSchedule`."""
    if isinstance(phases, dict):
        phases = [phases]
    schedule = LRSchedule(list(phases or []), steps_per_epoch, max_epochs, base_lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
