"""The table of DaViT architectures."""
from __future__ import annotations

from dataclasses import dataclass, field, asdict
from typing import Sequence


@dataclass(frozen=True)
class DaViTArch:
    """Width, depth and attention layout of a DaViT backbone."""

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int = 7
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        lengths = {len(self.embed_dims), len(self.depths), len(self.num_heads)}
        if len(lengths) != 1:
            raise ValueError(
                f"embed_dims, depths and num_heads must have one entry per stage; got "
                f"{list(self.embed_dims)}, {list(self.depths)}, {list(self.num_heads)}"
            )
        for dim, heads in zip(self.embed_dims, self.num_heads):
            if heads < 1 or dim % heads:
                raise ValueError(f"embed dim {dim} is not divisible by {heads} heads")
        if any(d < 1 for d in self.depths):
            raise ValueError(f"every stage needs at least one block; got depths {list(self.depths)}")
        if self.window_size < 1:
            raise ValueError(f"window_size must be positive, got {self.window_size}")

    def to_dict(self) -> dict:
        return asdict(self)


ARCHS: dict[str, DaViTArch] = {
    "tiny": DaViTArch((96, 192, 384, 768), (1, 1, 3, 1), (3, 6, 12, 24)),
    "small": DaViTArch((96, 192, 384, 768), (1, 1, 9, 1), (3, 6, 12, 24)),
    "base": DaViTArch((128, 256, 512, 1024), (1, 1, 9, 1), (4, 8, 16, 32)),
    "large": DaViTArch((192, 384, 768, 1536), (1, 1, 9, 1), (6, 12, 24, 48)),
    "huge": DaViTArch((256, 512, 1024, 2048), (1, 1, 9, 1), (8, 16, 32, 64)),
    "giant": DaViTArch((384, 768, 1536, 3072), (1, 1, 12, 3), (12, 24, 48, 96)),
}


def resolve_arch(arch: str | DaViTArch | dict) -> DaViTArch:
    """Turn an architecture name, a dict of its fields or a DaViTArch into a DaViTArch."""
    if isinstance(arch, DaViTArch):
        return arch
    if isinstance(arch, str):
        if arch not in ARCHS:
            raise ValueError(f"unknown DaViT architecture {arch!r}; choose one of {sorted(ARCHS)} "
                             "or pass a dict with embed_dims, depths and num_heads")
        return ARCHS[arch]
    if isinstance(arch, dict):
        known = {"embed_dims", "depths", "num_heads", "window_size", "mlp_ratio"}
        unknown = set(arch) - known
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}; allowed: {sorted(known)}")
        missing = {"embed_dims", "depths", "num_heads"} - set(arch)
        if missing:
            raise ValueError(f"custom architecture needs {sorted(missing)}")
        fields = dict(arch)
        for key in ("embed_dims", "depths", "num_heads"):
            fields[key] = tuple(int(v) for v in fields[key])
        return DaViTArch(**fields)
    raise TypeError(f"arch must be a name, a dict or a DaViTArch, not {type(arch).__name__}")
