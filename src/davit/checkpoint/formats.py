"""State-dict key layouts of the published DaViT checkpoints and conversion between them.

Formats:
    ``official``     Microsoft's DaViT (``patch_embeds.*``, ``main_blocks.*``, ``norms.*``, ``head.*``)
    ``mmpretrain``   mmpretrain / OpenMMLab (``backbone.patch_embed.*``, ``backbone.stages.*``, ``head.fc.*``)
    ``timm``         timm's ``davit_*`` models (``stem.*``, ``stages.*``, ``head.norm.*``, ``head.fc.*``;
                     the Florence-2 towers ``davit_*_fl`` name their blocks ``spatial_block``/``channel_block``)
    ``official-dense``  the official detection/segmentation backbone (``patch_embeds.*``,
                     ``main_blocks.*``, ``norm{i}.*`` for each output stage; no head), as its
                     ``pretrained=`` / mmdet's ``init_cfg`` reads a backbone file
    ``mmdet``        the same below mmdet's / mmseg's ``backbone.`` (a detector's ``load_from``); the
                     detector's other tensors (neck, heads) are skipped on reading
    ``davit``        this library (``backbone.stem.*``, ``backbone.stages.*``, ``backbone.out_norms.*``,
                     ``projector.*``, ``head.*``)
    ``florence2``    Florence-2's remote-code checkpoints, ``transformers`` transformers' Florence-2
                     (see :mod:`davit.checkpoint.florence2_formats`)
Every tensor has the same shape in all of them, except Florence-2's projection, which the remote
code stores transposed; otherwise only names differ. The dense layouts have no place for a
classifier or projector: writing them leaves those out (logged).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import NamedTuple

from torch import Tensor

from ..errors import CheckpointFormatError, InvalidArgumentError
from . import florence2_formats as fl

logger = logging.getLogger("davit")

DENSE_FORMATS = ("official-dense", "mmdet")
FORMATS = ("official", "mmpretrain", "timm", "davit", *fl.FLORENCE2_FORMATS, *DENSE_FORMATS)
DETECTOR_PREFIX = "backbone."  # where mmdet and mmseg keep a detector's backbone
BLOCK_KINDS = ("spatial", "channel")
_PARAM = r"(?P<p>weight|bias)"

Rule = tuple[re.Pattern, Callable[[re.Match], str | None]]


def _rule(pattern: str, build: Callable[[re.Match], str | None]) -> Rule:
    return re.compile("^" + pattern + "$"), build


def _g(m: re.Match, name: str) -> str:
    return m.group(name)


# Block tails: (our name, official name, mmpretrain spatial name, mmpretrain channel name)
_TAILS = [
    ("cpe1.proj", "cpe.0.proj", "cpe1.proj", "cpe1.proj"),
    ("cpe2.proj", "cpe.1.proj", "cpe2.proj", "cpe2.proj"),
    ("norm1", "norm1", "norm1", "norm1"),
    ("norm2", "norm2", "norm2", "norm2"),
    ("attn.qkv", "attn.qkv", "attn.w_msa.qkv", "attn.qkv"),
    ("attn.proj", "attn.proj", "attn.w_msa.proj", "attn.proj"),
    ("mlp.fc1", "mlp.fc1", "ffn.layers.0.0", "ffn.layers.0.0"),
    ("mlp.fc2", "mlp.fc2", "ffn.layers.1", "ffn.layers.1"),
]
_OURS_TAIL = {ours: (off, mm_s, mm_c) for ours, off, mm_s, mm_c in _TAILS}
_OFFICIAL_TAIL = {off: ours for ours, off, _, _ in _TAILS}
_MM_TAIL = {(0, mm_s): ours for ours, _, mm_s, _ in _TAILS} | {(1, mm_c): ours for ours, _, _, mm_c in _TAILS}
_TAIL_ALT = "|".join(sorted({re.escape(t) for row in _TAILS for t in row}, key=len, reverse=True))

_OUR_BLOCK = rf"backbone\.stages\.(?P<s>\d+)\.blocks\.(?P<b>\d+)\.(?P<k>spatial|channel)\.(?P<t>{_TAIL_ALT})\.{_PARAM}"


def _ours_block(m: re.Match, tail: str, kind: str | None = None) -> str:
    kind = kind or m.group("k")
    return f"backbone.stages.{m['s']}.blocks.{m['b']}.{kind}.{tail}.{m['p']}"


def _official_backbone(prefix: str = "") -> list[Rule]:
    """The official DaViT's patch embeddings and blocks, below ``prefix``; shared by the
    classification and dense layouts, which differ only in their norms and head."""
    at = re.escape(prefix)
    return [
        _rule(rf"{at}patch_embeds\.0\.proj\.{_PARAM}", lambda m: f"backbone.stem.conv.{m['p']}"),
        _rule(rf"{at}patch_embeds\.0\.norm\.{_PARAM}", lambda m: f"backbone.stem.norm.{m['p']}"),
        _rule(rf"{at}patch_embeds\.(?P<s>\d+)\.(?P<l>proj|norm)\.{_PARAM}",
              lambda m: f"backbone.stages.{m['s']}.downsample.{'conv' if m['l'] == 'proj' else 'norm'}.{m['p']}"),
        _rule(rf"{at}main_blocks\.(?P<s>\d+)\.(?P<b>\d+)\.(?P<k>[01])\.(?P<t>{_TAIL_ALT})\.{_PARAM}",
              lambda m: _ours_block(m, _OFFICIAL_TAIL[m["t"]], BLOCK_KINDS[int(m["k"])])
              if m["t"] in _OFFICIAL_TAIL else None),
    ]


def _official_dense(prefix: str = "") -> list[Rule]:
    """The official dense backbone: the blocks and one ``norm{i}`` per output stage."""
    return [*_official_backbone(prefix), _rule(rf"{re.escape(prefix)}norm(?P<i>\d+)\.{_PARAM}",
                                               lambda m: f"backbone.out_norms.{m['i']}.{m['p']}")]


_TO_OURS: dict[str, list[Rule]] = {
    "official": [
        *_official_backbone(),
        _rule(rf"norms\.{_PARAM}", lambda m: f"head.norm.{m['p']}"),
        _rule(rf"head\.{_PARAM}", lambda m: f"head.fc.{m['p']}"),
    ],
    "mmpretrain": [
        _rule(rf"backbone\.patch_embed\.projection\.{_PARAM}", lambda m: f"backbone.stem.conv.{m['p']}"),
        _rule(rf"backbone\.patch_embed\.norm\.{_PARAM}", lambda m: f"backbone.stem.norm.{m['p']}"),
        _rule(rf"backbone\.stages\.(?P<s>\d+)\.downsample\.(?P<l>projection|norm)\.{_PARAM}",
              lambda m: f"backbone.stages.{int(m['s']) + 1}.downsample."
                        f"{'conv' if m['l'] == 'projection' else 'norm'}.{m['p']}"),
        _rule(rf"backbone\.stages\.(?P<s>\d+)\.blocks\.(?P<b>\d+)\.(?P<k>spatial|channel)_block\."
              rf"(?P<t>{_TAIL_ALT})\.{_PARAM}",
              lambda m: _ours_block(m, _MM_TAIL[(BLOCK_KINDS.index(m["k"]), m["t"])])
              if (BLOCK_KINDS.index(m["k"]), m["t"]) in _MM_TAIL else None),
        _rule(rf"backbone\.norm\d+\.{_PARAM}", lambda m: f"head.norm.{m['p']}"),
        _rule(rf"head\.fc\.{_PARAM}", lambda m: f"head.fc.{m['p']}"),
    ],
    "timm": [
        _rule(rf"stem\.(?P<l>conv|norm)\.{_PARAM}", lambda m: f"backbone.stem.{m['l']}.{m['p']}"),
        _rule(rf"stages\.(?P<s>\d+)\.downsample\.(?P<l>conv|norm)\.{_PARAM}",
              lambda m: f"backbone.stages.{m['s']}.downsample.{m['l']}.{m['p']}"),
        _rule(rf"stages\.(?P<s>\d+)\.blocks\.(?P<b>\d+)\.(?P<k>[01]|spatial_block|channel_block)\."
              rf"(?P<t>{_TAIL_ALT})\.{_PARAM}",
              lambda m: _ours_block(m, m["t"], _timm_kind(m["k"])) if m["t"] in _OURS_TAIL else None),
        _rule(rf"head\.(?P<l>norm|fc)\.{_PARAM}", lambda m: f"head.{m['l']}.{m['p']}"),
    ],
    "davit": [
        _rule(rf"backbone\.stem\.(?P<l>conv|norm)\.{_PARAM}", lambda m: m.group(0)),
        _rule(rf"backbone\.stages\.\d+\.downsample\.(?:conv|norm)\.{_PARAM}", lambda m: m.group(0)),
        _rule(rf"backbone\.out_norms\.\d+\.{_PARAM}", lambda m: m.group(0)),  # dense backbones
        _rule(_OUR_BLOCK, lambda m: m.group(0) if m["t"] in _OURS_TAIL else None),
        _rule("|".join(map(re.escape, fl.PROJECTOR_KEYS)), lambda m: m.group(0)),  # Florence-2
        _rule(rf"head\.(?:norm|fc)\.{_PARAM}", lambda m: m.group(0)),
    ],
    "official-dense": _official_dense(),
    "mmdet": _official_dense(DETECTOR_PREFIX),
}


def _timm_kind(name: str) -> str:
    """The block kind of timm's block name: ``0``/``1``, or ``spatial_block``/``channel_block``."""
    return BLOCK_KINDS[int(name)] if name.isdigit() else name.removesuffix("_block")


class _Target(NamedTuple):
    """What writing a layout needs to know of the whole state dict."""

    last_stage: int  # mmpretrain names the final norm after it
    florence2: bool  # a Florence-2 encoder: timm names its blocks


def _from_ours_official(key: str, target: _Target) -> str | None:
    if m := re.match(rf"^backbone\.stem\.(?P<l>conv|norm)\.{_PARAM}$", key):
        return f"patch_embeds.0.{'proj' if m['l'] == 'conv' else 'norm'}.{m['p']}"
    if m := re.match(rf"^backbone\.stages\.(?P<s>\d+)\.downsample\.(?P<l>conv|norm)\.{_PARAM}$", key):
        return f"patch_embeds.{m['s']}.{'proj' if m['l'] == 'conv' else 'norm'}.{m['p']}"
    if m := re.match("^" + _OUR_BLOCK + "$", key):
        kind = BLOCK_KINDS.index(m["k"])
        return f"main_blocks.{m['s']}.{m['b']}.{kind}.{_OURS_TAIL[m['t']][0]}.{m['p']}"
    if m := re.match(rf"^head\.(?P<l>norm|fc)\.{_PARAM}$", key):
        return f"norms.{m['p']}" if m["l"] == "norm" else f"head.{m['p']}"
    return None


def _from_ours_mmpretrain(key: str, target: _Target) -> str | None:
    if m := re.match(rf"^backbone\.stem\.(?P<l>conv|norm)\.{_PARAM}$", key):
        return f"backbone.patch_embed.{'projection' if m['l'] == 'conv' else 'norm'}.{m['p']}"
    if m := re.match(rf"^backbone\.stages\.(?P<s>\d+)\.downsample\.(?P<l>conv|norm)\.{_PARAM}$", key):
        layer = "projection" if m["l"] == "conv" else "norm"
        return f"backbone.stages.{int(m['s']) - 1}.downsample.{layer}.{m['p']}"
    if m := re.match("^" + _OUR_BLOCK + "$", key):
        kind = BLOCK_KINDS.index(m["k"])
        tail = _OURS_TAIL[m["t"]][1 + kind]
        return f"backbone.stages.{m['s']}.blocks.{m['b']}.{m['k']}_block.{tail}.{m['p']}"
    if m := re.match(rf"^head\.(?P<l>norm|fc)\.{_PARAM}$", key):
        return f"backbone.norm{target.last_stage}.{m['p']}" if m["l"] == "norm" else key
    return None


def _from_ours_timm(key: str, target: _Target) -> str | None:
    if m := re.match(rf"^backbone\.((?:stem|stages\.\d+\.downsample)\.(?:conv|norm)\.{_PARAM})$", key):
        return m.group(1)
    if m := re.match("^" + _OUR_BLOCK + "$", key):
        kind = f"{m['k']}_block" if target.florence2 else BLOCK_KINDS.index(m["k"])
        return f"stages.{m['s']}.blocks.{m['b']}.{kind}.{m['t']}.{m['p']}"
    if re.match(rf"^head\.(?:norm|fc)\.{_PARAM}$", key):
        return key
    return None


def _from_ours_florence2(layout: fl.Florence2Layout) -> Callable[[str, _Target], str | None]:
    return lambda key, target: layout.from_ours(key)


def _from_ours_dense(prefix: str) -> Callable[[str, _Target], str | None]:
    """The official dense layout below ``prefix``: output norms as ``norm{i}``, the rest as the
    official classifier names them (its head is left out before renaming)."""
    def rename(key: str, target: _Target) -> str | None:
        if m := re.match(rf"^backbone\.out_norms\.(?P<i>\d+)\.{_PARAM}$", key):
            return f"{prefix}norm{m['i']}.{m['p']}"
        new = _from_ours_official(key, target)
        return None if new is None else prefix + new
    return rename


def _backbone_only(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The backbone's tensors, for a dense layout, which has no place for a classifier or a
    projector; what is left out is logged in one line."""
    kept = {key: value for key, value in state_dict.items() if key.startswith("backbone.")}
    left_out = [key for key in state_dict if key not in kept]
    if left_out:
        logger.info("a dense backbone layout holds no classifier or projector: left out %d tensor(s): %s",
                    len(left_out), _preview(left_out))
    return kept


def _skip_detector(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A detector's or segmentor's backbone tensors; the rest (neck, heads) counted in one log line."""
    kept = {key: value for key, value in state_dict.items() if key.startswith(DETECTOR_PREFIX)}
    if len(kept) < len(state_dict):
        parts = sorted({key.split(".", 1)[0] for key in state_dict if key not in kept})
        logger.info("ignored %d tensor(s) of the detector outside its backbone (%s); only the backbone is read",
                    len(state_dict) - len(kept), ", ".join(parts))
    return kept


_FROM_OURS: dict[str, Callable[[str, _Target], str | None]] = {
    "official": _from_ours_official,
    "mmpretrain": _from_ours_mmpretrain,
    "timm": _from_ours_timm,
    "davit": lambda key, target: key if _match_ours(key, "davit") else None,
    **{fmt: _from_ours_florence2(fl.LAYOUTS[fmt]) for fmt in fl.FLORENCE2_FORMATS},
    "official-dense": _from_ours_dense(""),
    "mmdet": _from_ours_dense(DETECTOR_PREFIX),
}

# Steps outside a layout's renaming: on reading, before it (what the file holds besides the model)
# and after it (on this library's side); on writing, before it.
_BEFORE_READING: dict[str, Callable[[Mapping[str, Tensor]], dict[str, Tensor]]] = {
    **{fmt: partial(fl.skip_language_model, fmt=fmt) for fmt in fl.FLORENCE2_FORMATS}, "mmdet": _skip_detector}
_AFTER_READING: dict[str, Callable[[Mapping[str, Tensor]], dict[str, Tensor]]] = {
    "timm": fl.drop_timm_placeholder_norm, "florence2": fl.transpose_projection}
_BEFORE_WRITING: dict[str, Callable[[Mapping[str, Tensor]], dict[str, Tensor]]] = {
    "timm": fl.timm_tower, "florence2": fl.transpose_projection, **dict.fromkeys(DENSE_FORMATS, _backbone_only)}


def _match_ours(key: str, fmt: str) -> str | None:
    if fmt in fl.LAYOUTS:
        return fl.LAYOUTS[fmt].to_ours(key)
    for pattern, build in _TO_OURS[fmt]:
        if m := pattern.match(key):
            return build(m)
    return None


def detect_format(state_dict: Mapping[str, Tensor]) -> str:
    """Name the layout (one of :data:`FORMATS`) whose rules account for every key."""
    keys = list(state_dict)
    if not keys:
        raise CheckpointFormatError("the checkpoint holds no tensors")
    scores = {fmt: sum(_match_ours(k, fmt) is not None for k in keys) for fmt in FORMATS}
    best = max(FORMATS, key=lambda fmt: scores[fmt])
    if scores[best] == 0:
        if fl.language_model_only(keys):
            raise fl.no_tower_error(len(keys))
        raise CheckpointFormatError(
            f"the checkpoint's keys fit no DaViT format ({', '.join(FORMATS)}); first keys: "
            f"{keys[:5]}. Is it a DaViT checkpoint?")
    return best


def to_davit(state_dict: Mapping[str, Tensor], fmt: str | None = None) -> dict[str, Tensor]:
    """Rename a state dict from ``fmt`` (detected when None) to this library's keys; a whole
    Florence-2 checkpoint's language model, and a whole detector's neck and heads, are skipped."""
    fmt = fmt or detect_format(state_dict)
    _check_format(fmt)
    if fmt in _BEFORE_READING:
        state_dict = _BEFORE_READING[fmt](state_dict)
    renamed, unknown = _renamed(state_dict, lambda key: _match_ours(key, fmt))
    if unknown:
        raise CheckpointFormatError(
            f"{len(unknown)} key(s) are not part of the {fmt} DaViT format: {_preview(unknown)}")
    fl.check_tower(renamed)
    return _AFTER_READING[fmt](renamed) if fmt in _AFTER_READING else renamed


def _renamed(state_dict: Mapping[str, Tensor],
             rename: Callable[[str], str | None]) -> tuple[dict[str, Tensor], list[str]]:
    """The tensors under their new names, and the keys ``rename`` has no name for (None)."""
    renamed, unknown = {}, []
    for key, value in state_dict.items():
        new = rename(key)
        if new is None:
            unknown.append(key)
        else:
            renamed[new] = value
    return renamed, unknown


def from_davit(state_dict: Mapping[str, Tensor], fmt: str) -> dict[str, Tensor]:
    """Rename a state dict with this library's keys to the ``fmt`` layout."""
    _check_format(fmt)
    state_dict = _BEFORE_WRITING[fmt](state_dict) if fmt in _BEFORE_WRITING else state_dict
    stages = {int(m.group(1)) for k in state_dict if (m := re.match(r"^backbone\.stages\.(\d+)\.", k))}
    target = _Target(max(stages, default=3), fl.is_florence2_tower(state_dict))
    renamed, unknown = _renamed(state_dict, lambda key: _FROM_OURS[fmt](key, target))
    if unknown:
        raise CheckpointFormatError(
            f"{len(unknown)} key(s) have no place in the {fmt} format (not DaViT keys, or parts that "
            f"layout does not hold): {_preview(unknown)}")
    return renamed


def convert_state_dict(state_dict: Mapping[str, Tensor], to: str,
                       source: str | None = None) -> dict[str, Tensor]:
    """Convert between any two formats (the source is detected when not given)."""
    return from_davit(to_davit(state_dict, source), to)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _preview(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
