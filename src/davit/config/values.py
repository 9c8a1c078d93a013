"""Typed reads of single config values: each raises a one-line :class:`ConfigError` that names the
key, the value found and what is expected (``train_cfg.max_epochs must be a positive integer,
got 'abc'``). Values come from config files and ``--cfg-options``, where ``abc`` is a string."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError


def integer(table: Mapping, key: str | int, where: str, default: int | None = None,
            minimum: int | None = None, maximum: int | None = None) -> int:
    """``table[key]`` (or ``default``; without one the key is required) as an int within
    ``[minimum, maximum]``; bools are refused."""
    value = _get(table, key, where, default)
    low = -(2 ** 63) if minimum is None else minimum
    high = 2 ** 63 if maximum is None else maximum
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{where}.{key} must be {_int_range(minimum, maximum)}, got {value!r}")
    return value


def number(table: Mapping, key: str | int, where: str, default: float | None = None,
           minimum: float | None = None, below: float | None = None, positive: bool = False) -> float:
    """``table[key]`` (or ``default``) as a float: at least ``minimum``, less than ``below`` and,
    with ``positive``, above 0."""
    value = _get(table, key, where, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok and ((minimum is not None and value < minimum) or (below is not None and value >= below)
               or (positive and value <= 0)):
        ok = False
    if not ok:
        raise ConfigError(f"{where}.{key} must be {_float_range(minimum, below, positive)}, got {value!r}")
    return float(value)


def flag(table: Mapping, key: str, where: str, default: bool) -> bool:
    """``table[key]`` (or ``default``) as a bool (``True``/``False``; ``true``/``false`` on the
    command line)."""
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be True or False, got {value!r}")
    return value


def subsection(cfg: Mapping, key: str, where: str | None = None) -> dict:
    """``cfg[key]`` as a dict (``{}`` when missing or None)."""
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        name = f"{where}.{key}" if where else key
        raise ConfigError(f"{name} must be a dict, got {value!r}")
    return value


def _get(table: Mapping, key: str | int, where: str, default: Any) -> Any:
    if key in table:
        return table[key]
    if default is None:
        raise ConfigError(f"the config has no {where}.{key}")
    return default


def _int_range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer from {minimum} to {maximum}"
    if minimum == 1:
        return "a positive integer"
    if minimum == 0:
        return "zero or a positive integer"
    return "an integer" if minimum is None else f"an integer of at least {minimum}"


def _float_range(minimum: float | None, below: float | None, positive: bool) -> str:
    if positive:
        return "a positive number" + (f" below {below}" if below is not None else "")
    if minimum is not None and below is not None:
        return f"a number in [{minimum}, {below})"
    if minimum is not None:
        return "zero or a positive number" if minimum == 0 else f"a number of at least {minimum}"
    return "a number"
