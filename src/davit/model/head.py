"""The classification head every DaViT model uses: pooling, LayerNorm and a linear layer."""
from __future__ import annotations

from torch import Tensor, nn


class ClassifierHead(nn.Module):
    """Global average pool + LayerNorm + Linear.

    The official DaViT pools and then normalises; mmpretrain's port normalises every token and
    then pools (``norm_first=True``).
    """

    def __init__(self, dim: int, num_classes: int, norm_first: bool = False) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.fc, nn.Linear):
            nn.init.trunc_normal_(self.fc.weight, std=0.02)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """``x``: last-stage tokens of shape (B, H, W, C)."""
        if self.norm_first:
            x = self.norm(x).mean(dim=(1, 2))
        else:
            x = self.norm(x.mean(dim=(1, 2)))
        return x if pre_logits else self.fc(x)
