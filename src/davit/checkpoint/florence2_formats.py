"""Florence-2's key layouts: its DaViT vision tower and multimodal projector, as
:mod:`davit.checkpoint.formats` reads and writes them.

Formats:
    ``florence2``     the original remote-code checkpoints (``microsoft/Florence-2-*``):
                      ``vision_tower.convs.*``, ``vision_tower.blocks.*`` (``conv1.fn.dw``,
                      ``window_attn.fn.qkv``, ``ffn.fn.net.fc1``, ...), ``image_projection`` (a
                      (dim, projection) matrix: a Linear weight transposed), ``image_proj_norm.*``,
                      ``image_pos_embed.*``, ``visual_temporal_embed.*``
    ``transformers``  transformers' ``Florence2ForConditionalGeneration``: ``model.vision_tower.*``
                      and ``model.multi_modal_projector.*``
A whole Florence-2 checkpoint also holds the language model (``language_model.*``; in
transformers' ``model.language_model.*`` and ``lm_head.*``): those tensors are skipped.
timm's ``davit_base_fl`` / ``davit_huge_fl`` are the ``timm`` format with named blocks
(``spatial_block``, ``channel_block``) and a ``head.norm`` that Florence-2 does not have:
see :func:`drop_timm_placeholder_norm`.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..errors import CheckpointFormatError

logger = logging.getLogger("davit")

FLORENCE2_FORMATS = ("florence2", "transformers")
TIMM_BLOCK_NAMES = ("spatial_block", "channel_block")
_PARAM = r"(?P<p>weight|bias)"

# The projector's keys in this library (Florence2Encoder), transformers (below
# model.multi_modal_projector.) and the remote code.
_PROJECTOR = (
    ("image_projection.weight", "image_projection"),
    ("image_proj_norm.weight", "image_proj_norm.weight"),
    ("image_proj_norm.bias", "image_proj_norm.bias"),
    ("image_position_embed.row_embeddings.weight", "image_pos_embed.row_embeddings.weight"),
    ("image_position_embed.column_embeddings.weight", "image_pos_embed.column_embeddings.weight"),
    ("visual_temporal_embed.pos_idx_to_embed", "visual_temporal_embed.pos_idx_to_embed"),
)
PROJECTOR_KEYS = tuple(f"projector.{ours}" for ours, _ in _PROJECTOR)
_PROJECTION = "projector.image_projection.weight"

# Block tails: (ours, remote code's, transformers'); {attn} is window_attn in spatial blocks and
# channel_attn in channel blocks.
_TAILS = (
    ("cpe1.proj", "conv1.fn.dw", "conv1"),
    ("norm1", "{attn}.norm", "norm1"),
    ("attn.qkv", "{attn}.fn.qkv", "{attn}.qkv"),
    ("attn.proj", "{attn}.fn.proj", "{attn}.proj"),
    ("cpe2.proj", "conv2.fn.dw", "conv2"),
    ("norm2", "ffn.norm", "norm2"),
    ("mlp.fc1", "ffn.fn.net.fc1", "ffn.fc1"),
    ("mlp.fc2", "ffn.fn.net.fc2", "ffn.fc2"),
)
_ATTN = {"spatial": "window_attn", "channel": "channel_attn"}

_OUR_PATCH = re.compile(rf"^backbone\.(?:stem|stages\.(?P<s>[1-9]\d*)\.downsample)\.(?P<l>conv|norm)\.{_PARAM}$")
_OUR_BLOCK = re.compile(
    rf"^backbone\.stages\.(?P<s>\d+)\.blocks\.(?P<b>\d+)\.(?P<k>spatial|channel)\.(?P<t>[\w.]+)\.{_PARAM}$")


@dataclass(frozen=True)
class Florence2Layout:
    """One Florence-2 layout: where its tower and projector keys live and what its layers are called."""

    tower: str  # the prefix of the vision tower's keys
    conv: str  # a patch embedding's convolution
    tails: Mapping[tuple[str, str], str]  # (block kind, our tail) -> its tail
    projector: Mapping[str, str]  # our projector key -> its
    language_model: re.Pattern  # the language model's keys, skipped on reading

    def to_ours(self, key: str) -> str | None:
        """This library's name for ``key``; None when ``key`` is not part of the layout."""
        if key in self._projector_back:
            return self._projector_back[key]
        if not key.startswith(self.tower):
            return None
        rest = key[len(self.tower):]
        if m := re.match(rf"^convs\.(?P<s>\d+)\.(?P<l>{self.conv}|norm)\.{_PARAM}$", rest):
            where = "stem" if m["s"] == "0" else f"stages.{m['s']}.downsample"
            return f"backbone.{where}.{'conv' if m['l'] == self.conv else 'norm'}.{m['p']}"
        if m := re.match(rf"^blocks\.(?P<s>\d+)\.(?P<b>\d+)\.(?P<k>spatial|channel)_block\.(?P<t>[\w.]+)\.{_PARAM}$",
                         rest):
            tail = self._tails_back.get((m["k"], m["t"]))
            return None if tail is None else f"backbone.stages.{m['s']}.blocks.{m['b']}.{m['k']}.{tail}.{m['p']}"
        return None

    def from_ours(self, key: str) -> str | None:
        """The layout's name for this library's ``key``; None when the layout has no place for it."""
        if key in self.projector:
            return self.projector[key]
        if m := _OUR_PATCH.match(key):
            layer = self.conv if m["l"] == "conv" else "norm"
            return f"{self.tower}convs.{m['s'] or 0}.{layer}.{m['p']}"
        if (m := _OUR_BLOCK.match(key)) and (tail := self.tails.get((m["k"], m["t"]))) is not None:
            return f"{self.tower}blocks.{m['s']}.{m['b']}.{m['k']}_block.{tail}.{m['p']}"
        return None

    @cached_property
    def _projector_back(self) -> dict[str, str]:
        return {theirs: ours for ours, theirs in self.projector.items()}

    @cached_property
    def _tails_back(self) -> dict[tuple[str, str], str]:
        return {(kind, theirs): ours for (kind, ours), theirs in self.tails.items()}


def _tails(column: int) -> dict[tuple[str, str], str]:
    return {(kind, row[0]): row[column].format(attn=attn) for row in _TAILS for kind, attn in _ATTN.items()}


LAYOUTS = {
    "florence2": Florence2Layout(
        "vision_tower.", "proj", _tails(1),
        {f"projector.{ours}": remote for ours, remote in _PROJECTOR}, re.compile(r"^language_model\.")),
    "transformers": Florence2Layout(
        "model.vision_tower.", "conv", _tails(2),
        {f"projector.{ours}": f"model.multi_modal_projector.{ours}" for ours, _ in _PROJECTOR},
        re.compile(r"^(?:model\.language_model|lm_head)\.")),
}


def transpose_projection(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The remote code stores the projection as a (dim, projection) matrix, the transpose of the
    Linear weight the other layouts hold; this swaps one for the other (its own inverse)."""
    out = dict(state_dict)
    weight = out.get(_PROJECTION)
    if isinstance(weight, Tensor):
        out[_PROJECTION] = weight.t().contiguous()
    return out


def skip_language_model(state_dict: Mapping[str, Tensor], fmt: str) -> dict[str, Tensor]:
    """``state_dict`` without the language model of a whole Florence-2 checkpoint (counted in one
    log line); a checkpoint that holds nothing else has no vision tower and is refused."""
    pattern = LAYOUTS[fmt].language_model
    kept = {key: value for key, value in state_dict.items() if not pattern.match(key)}
    skipped = len(state_dict) - len(kept)
    if skipped and not kept:
        raise no_tower_error(skipped)
    if skipped:
        logger.info("ignored %d tensor(s) of Florence-2's language model; only the vision encoder is read",
                    skipped)
    return kept


def no_tower_error(count: int) -> CheckpointFormatError:
    """The error for a checkpoint of ``count`` tensors, all of Florence-2's language model."""
    return CheckpointFormatError(
        f"the checkpoint holds no vision tower: its {count} tensor(s) all belong to Florence-2's "
        "language model. Give a checkpoint with the vision encoder (the whole Florence-2 model, "
        "or its vision tower)")


def language_model_only(keys: list[str]) -> bool:
    """Whether every key belongs to the language model of a Florence-2 checkpoint."""
    return any(all(layout.language_model.match(key) for key in keys) for layout in LAYOUTS.values())


def check_tower(state_dict: Mapping[str, Tensor]) -> None:
    """Refuse a (davit-format) Florence-2 projector that comes without its vision tower."""
    if any(key.startswith("projector.") for key in state_dict) and \
            not any(key.startswith("backbone.") for key in state_dict):
        raise CheckpointFormatError(
            "the checkpoint holds Florence-2's projector but no vision tower (no patch embeddings or "
            "blocks); the projector alone cannot encode images. Give the whole Florence-2 checkpoint")


def is_florence2_tower(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether a davit-format state dict is Florence-2's encoder: a projector, or the overlapping
    (3x3) downsampling patch embeddings that timm builds with named blocks."""
    conv = state_dict.get("backbone.stages.1.downsample.conv.weight")
    return any(key.startswith("projector.") for key in state_dict) or \
        (isinstance(conv, Tensor) and tuple(conv.shape[-2:]) == (3, 3))


def drop_timm_placeholder_norm(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A Florence-2 tower read from timm, without timm's placeholder ``head.norm``.

    timm's ``davit_*_fl`` models end in a classifier head whose LayerNorm Florence-2 does not have;
    timm loads Florence-2's weights non-strictly and leaves that norm at its initial ones and
    zeros. Those carry nothing, and are dropped (logged) so the tower loads into
    :class:`~davit.model.Florence2Encoder`; a trained norm (a fine-tuned timm classifier) is kept
    as this library's ``head.norm``, the same LayerNorm on the pooled last stage.
    """
    weight, bias = state_dict.get("head.norm.weight"), state_dict.get("head.norm.bias")
    if "head.fc.weight" in state_dict or not is_florence2_tower(state_dict) or \
            not isinstance(weight, Tensor) or not isinstance(bias, Tensor):
        return dict(state_dict)
    if not (torch.all(weight == 1) and torch.all(bias == 0)):
        return dict(state_dict)
    logger.info("dropped timm's untrained head.norm (ones and zeros): Florence-2's tower has no final norm")
    return {key: value for key, value in state_dict.items() if not key.startswith("head.norm.")}


def timm_tower(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A Florence-2 encoder's davit-format state dict as timm's ``davit_*_fl`` holds it: the
    projector left out (timm's model has none; logged) and, when there is no head, the
    placeholder ``head.norm`` at LayerNorm's initial values, so that timm loads it strictly."""
    if not is_florence2_tower(state_dict):
        return dict(state_dict)
    out = {key: value for key, value in state_dict.items() if not key.startswith("projector.")}
    if len(out) < len(state_dict):
        logger.warning("timm's Florence-2 tower has no projector: its %d tensor(s) are not written",
                       len(state_dict) - len(out))
    last = max((int(m["s"]) for key in out if (m := _OUR_BLOCK.match(key))), default=None)
    norm = out.get(f"backbone.stages.{last}.blocks.0.spatial.norm1.weight")
    if "head.norm.weight" not in out and isinstance(norm, Tensor):
        out["head.norm.weight"] = torch.ones_like(norm)
        out["head.norm.bias"] = torch.zeros_like(norm)
    return out
