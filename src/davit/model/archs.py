"""The tables of DaViT architectures and of the semantics of its implementations.

A variant is an entry of :data:`ARCHS` (a :class:`DaViTArch`), not a code fork: widths, depths,
heads, the patch embedding of every stage, the channel-attention formula, output norms and
whether a classification head follows. Implementations that compute the same weights slightly
differently (the official DaViT, mmpretrain's port) are entries of :data:`SEMANTICS_TABLE`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import InvalidArgumentError, UnknownModelError

CHANNEL_ATTENTIONS = ("davit", "florence2")


@dataclass(frozen=True)
class DaViTArch:
    """Width, depth and layout of a DaViT backbone; the tuples have one entry per stage.

    ``patch_kernels``, ``patch_strides``, ``patch_paddings``: the convolution of each stage's
    patch embedding (stage 0's is the stem). ``patch_norm_first``: whether its LayerNorm comes
    before the convolution (on the input width) or after it (on the output width). Left empty,
    they take DaViT's layout: a 7x7 stride-4 stem (padding 3, norm after), then 2x2 stride-2
    downsamples (no padding, norm before).
    ``pad_to_stride``: pad the input right/bottom to a multiple of the stride before each patch
    embedding, as the official DaViT does. ``channel_attention``: ``"davit"`` (softmax(kᵀv / √d)
    applied to qᵀ) or ``"florence2"`` (softmax(qᵀk / √N) applied to vᵀ, N tokens).
    ``out_norms``: one LayerNorm on each output stage of the backbone (dense prediction).
    ``head``: whether the architecture ends in a classifier (pooling, LayerNorm, linear);
    Florence-2's vision tower has neither head nor final norm.
    """

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int = 7
    mlp_ratio: float = 4.0
    patch_kernels: tuple[int, ...] = ()
    patch_strides: tuple[int, ...] = ()
    patch_paddings: tuple[int, ...] = ()
    patch_norm_first: tuple[bool, ...] = ()
    pad_to_stride: bool = True
    channel_attention: str = "davit"
    out_norms: bool = False
    head: bool = True

    def __post_init__(self) -> None:
        stages = len(self.embed_dims)
        if not stages:
            raise InvalidArgumentError("an architecture needs at least one stage; embed_dims is empty")
        for name, stem, downsample in _DAVIT_PATCH_EMBEDS:
            if not getattr(self, name):
                object.__setattr__(self, name, (stem,) + (downsample,) * (stages - 1))
        per_stage = {name: getattr(self, name) for name in _PER_STAGE}
        if len({len(value) for value in per_stage.values()}) != 1:
            listed = ", ".join(f"{name}={list(value)}" for name, value in per_stage.items())
            raise InvalidArgumentError(f"every per-stage field must have one entry per stage; got {listed}")
        for dim, heads in zip(self.embed_dims, self.num_heads):
            if heads < 1 or dim % heads:
                raise InvalidArgumentError(f"embed dim {dim} is not divisible by {heads} heads")
        _check_at_least("depths", self.depths, 1, "every stage needs at least one block")
        _check_at_least("patch_kernels", self.patch_kernels, 1, "kernels must be positive")
        _check_at_least("patch_strides", self.patch_strides, 1, "strides must be positive")
        _check_at_least("patch_paddings", self.patch_paddings, 0, "paddings must not be negative")
        if self.window_size < 1:
            raise InvalidArgumentError(f"window_size must be positive, got {self.window_size}")
        if self.mlp_ratio <= 0:
            raise InvalidArgumentError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if self.channel_attention not in CHANNEL_ATTENTIONS:
            raise InvalidArgumentError(f"channel_attention must be one of {list(CHANNEL_ATTENTIONS)}, "
                                       f"got {self.channel_attention!r}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict that :func:`resolve_arch` turns back into this record."""
        return asdict(self)


_DAVIT_PATCH_EMBEDS = (  # (field, stem, downsamples) of DaViT's layout
    ("patch_kernels", 7, 2), ("patch_strides", 4, 2), ("patch_paddings", 3, 0), ("patch_norm_first", False, True))
_PER_STAGE = ("embed_dims", "depths", "num_heads", "patch_kernels", "patch_strides", "patch_paddings",
              "patch_norm_first")
_REQUIRED = ("embed_dims", "depths", "num_heads")


def _check_at_least(name: str, values: tuple[int, ...], low: int, reason: str) -> None:
    if any(value < low for value in values):
        raise InvalidArgumentError(f"{reason}; got {name} {list(values)}")


def _florence2(embed_dims: tuple[int, ...], num_heads: tuple[int, ...]) -> DaViTArch:
    """Florence-2's DaViT vision tower: overlapping patch embeddings, v2 channel attention."""
    return DaViTArch(embed_dims, (1, 1, 9, 1), num_heads, window_size=12,
                     patch_kernels=(7, 3, 3, 3), patch_strides=(4, 2, 2, 2), patch_paddings=(3, 1, 1, 1),
                     pad_to_stride=False, channel_attention="florence2", head=False)


ARCHS: dict[str, DaViTArch] = {
    "tiny": DaViTArch((96, 192, 384, 768), (1, 1, 3, 1), (3, 6, 12, 24)),
    "small": DaViTArch((96, 192, 384, 768), (1, 1, 9, 1), (3, 6, 12, 24)),
    "base": DaViTArch((128, 256, 512, 1024), (1, 1, 9, 1), (4, 8, 16, 32)),
    "large": DaViTArch((192, 384, 768, 1536), (1, 1, 9, 1), (6, 12, 24, 48)),
    "huge": DaViTArch((256, 512, 1024, 2048), (1, 1, 9, 1), (8, 16, 32, 64)),
    "giant": DaViTArch((384, 768, 1536, 3072), (1, 1, 12, 3), (12, 24, 48, 96)),
    "florence2-base": _florence2((128, 256, 512, 1024), (4, 8, 16, 32)),
    "florence2-large": _florence2((256, 512, 1024, 2048), (8, 16, 32, 64)),
}


def resolve_arch(arch: str | DaViTArch | dict) -> DaViTArch:
    """Turn an architecture name, a dict of its fields (lists for tuples) or a DaViTArch into a
    DaViTArch."""
    if isinstance(arch, DaViTArch):
        return arch
    if isinstance(arch, str):
        if arch not in ARCHS:
            raise UnknownModelError(f"unknown DaViT architecture {arch!r}; choose one of {sorted(ARCHS)} "
                                    "or pass a dict with embed_dims, depths and num_heads")
        return ARCHS[arch]
    if isinstance(arch, dict):
        return _arch_from_dict(arch)
    raise InvalidArgumentError(f"arch must be a name, a dict or a DaViTArch, not {type(arch).__name__}")


def arch_name(arch: DaViTArch) -> str:
    """The :data:`ARCHS` name of ``arch``, else its widths and depths, for messages."""
    name = next((name for name, known in ARCHS.items() if known == arch), None)
    return name or f"embed_dims={list(arch.embed_dims)}, depths={list(arch.depths)}"


def _arch_from_dict(arch: dict) -> DaViTArch:
    known = [field.name for field in fields(DaViTArch)]
    unknown = set(arch) - set(known)
    if unknown:
        raise InvalidArgumentError(f"unknown architecture fields {sorted(unknown)}; allowed: {known}")
    missing = [name for name in _REQUIRED if name not in arch]
    if missing:
        raise InvalidArgumentError(f"custom architecture needs {missing}")
    values = dict(arch)
    try:
        for name in _PER_STAGE:
            if name in values:
                cast = bool if name == "patch_norm_first" else int
                values[name] = tuple(cast(v) for v in values[name])
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(f"architecture field {name}: {error}") from None
    return DaViTArch(**values)


@dataclass(frozen=True)
class Semantics:
    """Where an implementation of the same weights computes differently.

    ``stem_same_padding``: the stem pads "same" (total ``(ceil(H/s)-1)*s + k - H``, floor-half
    before, the rest after; mmpretrain) instead of the architecture's padding.
    ``head_norm_first``: the classifier normalises every token and then pools (mmpretrain)
    instead of pooling and then normalising (the official DaViT).
    """

    stem_same_padding: bool
    head_norm_first: bool


SEMANTICS_TABLE: dict[str, Semantics] = {
    "official": Semantics(stem_same_padding=False, head_norm_first=False),
    "mmpretrain": Semantics(stem_same_padding=True, head_norm_first=True),
}
SEMANTICS = tuple(SEMANTICS_TABLE)


def resolve_semantics(semantics: str) -> Semantics:
    """The :class:`Semantics` named ``semantics``."""
    if semantics not in SEMANTICS_TABLE:
        raise InvalidArgumentError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")
    return SEMANTICS_TABLE[semantics]
