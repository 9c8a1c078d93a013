"""Florence-2's vision encoder: the DaViT tower and the projector that turns its last stage into
the image tokens Florence-2's language model reads.

The tower is a :class:`DaViT` of a head-less Florence-2 architecture (``florence2-base``,
``florence2-large``); the projector adds learned row/column embeddings and the first entry of a
cosine temporal table to every last-stage token, puts the mean token before the H x W tokens,
projects them without bias and normalises them, as ``Florence2Model.get_image_features`` does.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..errors import InvalidArgumentError
from .archs import ARCHS, DaViTArch, arch_name, resolve_arch
from .backbone import DaViT
from .base import DaViTModel
from .head import ClassifierHead

if TYPE_CHECKING:  # the card lives above the model; only its type is needed here
    from ..checkpoint.card import ModelCard

PROJECTION_DIMS = {"florence2-base": 768, "florence2-large": 1024}  # the published language widths
MAX_POSITIONS = 50  # rows and columns of the learned position table: sides up to 50 * 32 pixels
MAX_FRAMES = 100  # rows of the temporal table the checkpoints carry
MIN_SIDE = 32  # the tower's stride: a smaller side leaves no token to attend over


def is_florence2(arch: DaViTArch) -> bool:
    """Whether ``arch`` is a Florence-2 vision tower (no head, Florence-2's channel attention),
    which the library builds as a :class:`Florence2Encoder`."""
    return not arch.head and arch.channel_attention == "florence2"


def standard_projection_dim(arch: DaViTArch) -> int:
    """Florence-2's projection width for ``arch`` (768 base, 1024 large); for other towers, the
    last stage's width."""
    for name, dim in PROJECTION_DIMS.items():
        if ARCHS[name] == arch:
            return dim
    return arch.embed_dims[-1]


class PositionEmbedding2D(nn.Module):
    """Learned embeddings of each column (first half of the channels) and row (second half)."""

    def __init__(self, dim: int, max_positions: int = MAX_POSITIONS) -> None:
        super().__init__()
        self.row_embeddings = nn.Embedding(max_positions, dim // 2)
        self.column_embeddings = nn.Embedding(max_positions, dim - dim // 2)

    def forward(self, height: int, width: int) -> Tensor:
        """The (H, W, C) table for an H x W map."""
        limit = self.row_embeddings.num_embeddings
        if height > limit or width > limit:
            raise InvalidArgumentError(
                f"Florence-2's projector has position embeddings for at most {limit} x {limit} tokens "
                f"(images up to {limit * MIN_SIDE} pixels a side); got {height} x {width}")
        device = self.row_embeddings.weight.device
        columns = self.column_embeddings(torch.arange(width, device=device))
        rows = self.row_embeddings(torch.arange(height, device=device))
        return torch.cat([columns.expand(height, -1, -1), rows[:, None].expand(-1, width, -1)], dim=-1)


class TemporalEmbedding(nn.Module):
    """A fixed sine/cosine table over frames (sines in even channels, cosines in odd ones); a
    single image is frame 0. A buffer, so the checkpoints' table is what is used."""

    def __init__(self, dim: int, max_frames: int = MAX_FRAMES) -> None:
        super().__init__()
        half = dim // 2
        rates = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / half))
        angles = torch.arange(max_frames, dtype=torch.float)[:, None] * rates
        table = torch.empty(max_frames, dim)
        table[:, 0::2], table[:, 1::2] = angles.sin(), angles.cos()
        self.pos_idx_to_embed: Tensor
        self.register_buffer("pos_idx_to_embed", table)

    def forward(self) -> Tensor:
        """The embedding of frame 0, (C,)."""
        return self.pos_idx_to_embed[0]


class Florence2Projector(nn.Module):
    """Last-stage tokens (B, H, W, C) to Florence-2's image tokens (B, 1 + H*W, projection_dim)."""

    def __init__(self, dim: int, projection_dim: int) -> None:
        super().__init__()
        self.image_projection = nn.Linear(dim, projection_dim, bias=False)
        self.image_proj_norm = nn.LayerNorm(projection_dim)
        self.image_position_embed = PositionEmbedding2D(dim)
        self.visual_temporal_embed = TemporalEmbedding(dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, dim = x.shape
        x = x + self.image_position_embed(height, width) + self.visual_temporal_embed()
        tokens = x.reshape(batch, height * width, dim)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        return self.image_proj_norm(self.image_projection(tokens))


class Florence2Encoder(DaViTModel):
    """Florence-2's vision encoder, optionally with a classification head for fine-tuning.

    ``model(images)`` returns the last-stage map (B, C, H/32, W/32) (transformers'
    ``Florence2VisionBackbone`` last hidden state), or logits when ``num_classes > 0``;
    :meth:`encode_image` returns Florence-2's image tokens and :meth:`embed` one vector per image.

    Args:
        arch: a head-less architecture (``florence2-base``, ``florence2-large``, a dict or record).
        projection_dim: width of the image tokens; None takes Florence-2's for the architecture
            (768 base, 1024 large); 0 builds the tower alone (timm's weights have no projector).
        num_classes: > 0 adds a pooled LayerNorm + linear head (``head.norm``, ``head.fc``).
        out_indices, drop_path_rate, frozen_stages, grad_checkpointing: as for :class:`DaViT`.
    """

    def __init__(self, arch: str | dict | DaViTArch = "florence2-base", projection_dim: int | None = None,
                 num_classes: int = 0, out_indices: Iterable[int] = (3,), drop_path_rate: float = 0.0,
                 frozen_stages: int = -1, grad_checkpointing: bool = False, card: ModelCard | None = None) -> None:
        super().__init__(card)
        resolved = resolve_arch(arch)
        if resolved.head:
            raise InvalidArgumentError(f"architecture {arch_name(resolved)} has a classification head; "
                                       "build davit.DaViTClassifier for it")
        for name, value in (("num_classes", num_classes), ("projection_dim", projection_dim)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise InvalidArgumentError(f"{name} must be a non-negative integer, got {value!r}")
        self.backbone = DaViT(resolved, drop_path_rate=drop_path_rate, out_indices=out_indices,
                              frozen_stages=frozen_stages, grad_checkpointing=grad_checkpointing)
        self.num_features = self.backbone.num_features
        self.projection_dim = standard_projection_dim(resolved) if projection_dim is None else projection_dim
        self.projector = Florence2Projector(self.num_features, self.projection_dim) if self.projection_dim else None
        self.num_classes = num_classes
        self.head = ClassifierHead(self.num_features, num_classes) if num_classes else None
        self.semantics = "official"  # what the checkpoint code asks of every model

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if min(x.shape[-2:]) < MIN_SIDE:
            raise InvalidArgumentError(f"Florence-2's encoder needs images at least {MIN_SIDE} pixels a side "
                                       f"(its stride); got {x.shape[-2]} x {x.shape[-1]}")

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Logits (or the pooled, normalised features) of last-stage tokens."""
        if self.head is None:
            raise InvalidArgumentError("this Florence-2 encoder has no classification head; build it "
                                       "with num_classes > 0 to fine-tune it as a classifier")
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        features = self.forward_features(x)
        if self.head is None:
            return features.permute(0, 3, 1, 2)
        return self.forward_head(features)

    def encode_image(self, x: Tensor) -> Tensor:
        """Florence-2's image tokens: the pooled token, then the H/32 x W/32 tokens row by row,
        (B, 1 + h*w, projection_dim)."""
        if self.projector is None:
            raise InvalidArgumentError(
                "this Florence-2 encoder has no projector (its weights had none, as timm's tower); "
                "load a Florence-2 checkpoint with one (hf-hub:florence-community/Florence-2-base)")
        return self.projector(self.forward_features(x))

    def embed(self, x: Tensor, pooled: bool = True) -> Tensor:
        """One (B, projection_dim) vector per image (the pooled token), or every token."""
        tokens = self.encode_image(x)
        return tokens[:, 0] if pooled else tokens

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classification head with a fresh one for ``num_classes`` (0 removes it)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise InvalidArgumentError(f"num_classes must be a non-negative integer, got {num_classes!r}")
        device = next(self.backbone.parameters()).device
        self.head = ClassifierHead(self.num_features, num_classes).to(device) if num_classes else None
        self.num_classes = num_classes
