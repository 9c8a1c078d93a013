"""mmpretrain-style config files: ``_base_`` inheritance, ``--cfg-options`` overrides, dumping.

A ``.py`` config file is Python made of plain assignments. Its public (non ``_``) module-level
names that hold plain data (dicts, lists, tuples, numbers, strings, bools, None) form the config;
imported modules, functions and classes are skipped. **Python configs are code**: loading one runs
it, as mmengine does, so load only trusted ones. ``.json`` and ``.yaml`` / ``.yml`` configs are
data only: they are parsed, never executed, and their ``_base_`` files must be data configs too.
"""
from __future__ import annotations

import ast
import copy
import difflib
import io
import json
import keyword
import pprint
import tokenize
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from ..errors import ConfigError

YAML_SUFFIXES = (".yaml", ".yml")
DATA_SUFFIXES = (".json", *YAML_SUFFIXES)

_SCALARS = {str, int, float, bool, type(None)}
_WORDS = {"true": True, "false": False, "none": None}


def load_config(path: str | Path, overrides: list[str] | dict | None = None) -> dict:
    """Load a config file with its ``_base_`` files merged in, then apply ``overrides``.

    Bases merge first, in order; two bases defining the same top-level key is an error. The file's
    own values then merge recursively into the base dicts: dict keys override or extend, a dict
    holding ``_delete_=True`` replaces the base dict, and anything else replaces the base value.

    ``overrides`` are ``"a.b.c=value"`` strings (values parsed as Python literals; ``true``,
    ``false`` and ``none`` in any case; bare ``1,2`` is a list) or a ``{"a.b.c": value}`` dict.
    Path parts may be list indices. Setting a key that does not exist is an error unless the key
    is prefixed with ``+`` (``+model.extra=1``), which adds it and any missing parent dicts.
    """
    cfg = _load_file(Path(path).expanduser().resolve(), ())
    if isinstance(overrides, str):
        overrides = [overrides]
    if isinstance(overrides, dict):
        items = [(key, copy.deepcopy(value)) for key, value in overrides.items()]
    else:
        items = [_split_override(text) for text in overrides or ()]
    for key, value in items:
        _check_plain(value, key)
        add = key.startswith("+")
        parts = key.removeprefix("+").split(".")
        if not all(parts):
            raise ConfigError(f"malformed override key {key!r}")
        _assign(cfg, parts, 0, value, add)
    return cfg


def format_config(cfg: dict) -> str:
    """Python source that :func:`load_config` reads back to a dict equal to ``cfg``."""
    entries = []
    for key, value in cfg.items():
        if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key) \
                or key.startswith("_"):
            raise ConfigError(f"top-level config key {key!r} is not a public Python identifier")
        _check_plain(value, key)
        indent = " " * (len(key) + 3)
        text = pprint.pformat(value, width=100 - len(indent), sort_dicts=False)
        entries.append(f"{key} = " + text.replace("\n", "\n" + indent) + "\n")
    return "\n".join(entries)


def dump_config(cfg: dict, path: str | Path) -> None:
    """Write ``cfg`` as a config file in the format its suffix names: JSON, YAML, or else Python
    (see :func:`format_config`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(cfg, indent=2) + "\n"
    elif suffix in YAML_SUFFIXES:
        text = yaml.safe_dump(cfg, sort_keys=False)
    else:
        text = format_config(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def is_data_config(path: str | Path) -> bool:
    """Whether ``path`` names a data-only (JSON or YAML) config, which loading never executes."""
    return Path(path).suffix.lower() in DATA_SUFFIXES


def _load_file(path: Path, chain: tuple[Path, ...]) -> dict:
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(path):], path))
        raise ConfigError(f"_base_ cycle: {cycle}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if chain and is_data_config(chain[-1]) and not is_data_config(path):
        raise ConfigError(f"{chain[-1]} is a data-only config, but its _base_ {path} is Python, which would be "
                          "executed; give a .json or .yaml base")
    namespace = _parse(path) if is_data_config(path) else _execute(path)
    cfg: dict = {}
    origin: dict[str, Path] = {}
    for ref in _base_refs(namespace.get("_base_"), path):
        base = (path.parent / ref).resolve()
        if not base.is_file():
            raise ConfigError(f"base config {ref!r} referenced by {path} not found: {base}")
        for key, value in _load_file(base, (*chain, path)).items():
            if key in origin:
                raise ConfigError(f"key {key!r} is defined by two bases of {path}: "
                                  f"{origin[key]} and {base}")
            origin[key] = base
            cfg[key] = value
    own = {}
    for key, value in namespace.items():
        if key.startswith("_") or isinstance(value, ModuleType) or callable(value):
            continue
        try:
            _check_plain(value, key)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        own[key] = value
    return _merge(cfg, own)


def _parse(path: Path) -> dict:
    """A JSON or YAML config's mapping, parsed (YAML's safe loader: plain data only)."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as err:
        where = " ".join(str(err).split())
        raise ConfigError(f"{path} is not a valid {path.suffix.lstrip('.').upper()} config: {where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, not a {type(data).__name__}")
    return data


def _execute(path: Path) -> dict:
    namespace: dict[str, Any] = {"__file__": str(path), "__name__": "__davit_config__"}
    try:
        exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    except SyntaxError as err:
        raise ConfigError(f"syntax error in {path}, line {err.lineno}: {err.msg}") from err
    except Exception as err:
        lines = [f.lineno for f in traceback.extract_tb(err.__traceback__) if f.filename == str(path)]
        where = f", line {lines[-1]}" if lines else ""
        raise ConfigError(f"error in {path}{where}: {type(err).__name__}: {err}") from err
    return namespace


def _base_refs(value: Any, path: Path) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"_base_ in {path} must be a path or a list of paths, got {value!r}")


def _check_plain(value: Any, where: str) -> None:
    kind = type(value)
    if kind in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}.{i}")
    elif kind is dict:
        for key, item in value.items():
            if type(key) not in _SCALARS:
                raise ConfigError(f"{where} has a key of type {type(key).__name__}: {key!r}")
            _check_plain(item, f"{where}.{key}")
    elif kind not in _SCALARS:
        raise ConfigError(f"{where} holds a value of type {kind.__name__}; config values must be dicts, lists, "
                          "tuples, numbers, strings, bools or None")


def _merge(base: dict, child: dict) -> dict:
    """``child`` merged into ``base``; both are left untouched and nothing is shared with them."""
    out = dict(base)
    for key, value in child.items():
        if key == "_delete_":
            continue
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and not value.get("_delete_", False):
            out[key] = _merge(old, value)
        else:
            out[key] = _strip_delete(value)
    return out


def _strip_delete(value: Any) -> Any:
    """A fresh copy of ``value`` without ``_delete_`` markers."""
    if isinstance(value, dict):
        return {k: _strip_delete(v) for k, v in value.items() if k != "_delete_"}
    if isinstance(value, (list, tuple)):
        return type(value)(_strip_delete(v) for v in value)
    return value


def _split_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value")
    return key.strip(), _parse_value(raw.strip())


class _BareWords(ast.NodeTransformer):
    """Reads ``true``/``false``/``none`` in any case as constants and other bare words as strings."""

    def visit_Name(self, node: ast.Name) -> ast.Constant:
        word = node.id.lower()
        return ast.Constant(_WORDS.get(word, node.id))


def _parse_value(text: str) -> Any:
    try:
        value = ast.literal_eval(_BareWords().visit(ast.parse(text, mode="eval")))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return text
    if isinstance(value, tuple) and _has_bare_comma(text):
        return list(value)
    return value


def _has_bare_comma(text: str) -> bool:
    """Whether ``text`` has a comma outside any brackets (``1,2`` but not ``(1,2)``)."""
    depth = 0
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type != tokenize.OP:
            continue
        if token.string in {"(", "[", "{"}:
            depth += 1
        elif token.string in {")", "]", "}"}:
            depth -= 1
        elif token.string == "," and depth == 0:
            return True
    return False


def _assign(node: Any, parts: list[str], i: int, value: Any, add: bool) -> Any:
    """Set ``parts[i:]`` inside ``node`` to ``value``; returns the updated ``node``."""
    part, last = parts[i], i == len(parts) - 1
    if isinstance(node, dict):
        if part not in node:
            if not add:
                raise ConfigError(_unknown_key(parts, i, node))
            node[part] = {}
        node[part] = value if last else _assign(node[part], parts, i + 1, value, add)
        return node
    parent = ".".join(parts[:i])
    if isinstance(node, (list, tuple)):
        try:
            index = int(part)
        except ValueError:
            index = None
        if index is None or not -len(node) <= index < len(node):
            raise ConfigError(f"cannot set {'.'.join(parts)!r}: {parent!r} is a "
                              f"{type(node).__name__} of length {len(node)} and {part!r} is not "
                              "a valid index")
        items = list(node)
        items[index] = value if last else _assign(items[index], parts, i + 1, value, add)
        return items if isinstance(node, list) else tuple(items)
    raise ConfigError(f"cannot set {'.'.join(parts)!r}: {parent!r} is {node!r}, not a dict or a list")


def _unknown_key(parts: list[str], i: int, node: dict) -> str:
    prefix = "".join(f"{p}." for p in parts[:i])
    keys = [str(k) for k in node]
    close = difflib.get_close_matches(parts[i], keys, n=3)
    hint = (f"did you mean {', '.join(prefix + k for k in close)}?" if close
            else f"existing keys{' under ' + prefix[:-1] if prefix else ''}: {', '.join(keys)}.")
    return (f"unknown config key {'.'.join(parts)!r} ({prefix + parts[i]!r} does not exist); "
            f"{hint} Prefix the override with '+' to add a new key.")
