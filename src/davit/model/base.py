"""What every DaViT model built on a :class:`DaViT` backbone offers, whatever its head: timm's
feature API (``forward_features``, ``forward_head``, ``forward_intermediates``,
``set_grad_checkpointing``, ``reset_classifier``) over one backbone."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import Tensor, nn

from ..errors import InvalidArgumentError
from .archs import DaViTArch
from .backbone import DaViT, stage_numbers
from .head import ClassifierHead

if TYPE_CHECKING:  # the card lives above the model; only its type is needed here
    from ..checkpoint.card import ModelCard

OUTPUT_FORMATS = ("NCHW", "NHWC")


class DaViTModel(nn.Module):
    """The base of :class:`DaViTClassifier` and :class:`Florence2Encoder`: a backbone, an optional
    head, and what ``davit.get_model`` knows of the weights (``card``, ``class_names``)."""

    backbone: DaViT
    head: ClassifierHead | None
    num_classes: int
    num_features: int
    semantics: str

    def __init__(self, card: ModelCard | None = None) -> None:
        super().__init__()
        self.set_card(card)

    def set_card(self, card: ModelCard | None) -> None:
        """Say what the model is (architecture, classes, preprocessing): ``davit.get_model`` gives
        every model the card of its weights when it builds it, and a new one when it loads others."""
        self.card = card
        self.class_names: list[str] | None = (list(card.class_names) if card is not None and
                                              card.class_names is not None else None)

    @property
    def arch(self) -> DaViTArch:
        return self.backbone.arch

    def check_input(self, x: Tensor) -> None:
        """Refuse a batch the model cannot take, with the reason, before any layer fails on it."""
        if x.ndim != 4:
            raise InvalidArgumentError(f"expected an image batch of shape (N, C, H, W), got {tuple(x.shape)}")

    def forward_features(self, x: Tensor) -> Tensor:
        """Last-stage tokens, (B, H/32, W/32, C): what :meth:`forward_head` takes."""
        self.check_input(x)
        return self.backbone.forward_stages(x)[-1]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        raise NotImplementedError

    def extract_feat(self, x: Tensor, stage: str = "backbone") -> tuple[Tensor, ...] | Tensor:
        """Features for downstream use, as mmpretrain's ``extract_feat``.

        ``stage="backbone"``: a tuple of NCHW maps of the stages in ``out_indices`` (strides 4 to 32).
        ``stage="pre_logits"``: the (B, C) pooled and normalised features that feed the classifier.
        """
        if stage == "backbone":
            self.check_input(x)
            return self.backbone(x)
        if stage == "pre_logits":
            return self.forward_head(self.forward_features(x), pre_logits=True)
        raise InvalidArgumentError(f"stage must be 'backbone' or 'pre_logits', got {stage!r}")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (less memory, more time)."""
        self.backbone.set_grad_checkpointing(enable)

    def reset_classifier(self, num_classes: int) -> None:
        raise NotImplementedError

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The stage outputs timm's ``forward_intermediates`` gives, on the same weights.

        Args:
            indices: the stages to return: None for all, an int n for the last n, or a list (a
                negative index counts from the end).
            norm: normalise the last stage's output as the head would (only models whose head
                normalises tokens before pooling, mmpretrain's semantics, have such a norm).
            stop_early: run no stage after the last one asked for (then the final output is that
                stage's). With ``intermediates_only`` the model always stops there.
            output_fmt: ``"NCHW"`` (timm's) or ``"NHWC"`` (this library's token layout).
            intermediates_only: return the list of stage outputs alone.

        Returns:
            The list of stage outputs, or ``(final, intermediates)``, ``final`` being the last stage's
            output as :meth:`forward_features` gives it, in ``output_fmt`` (NHWC feeds
            :meth:`forward_head`).
        """
        if output_fmt not in OUTPUT_FORMATS:
            raise InvalidArgumentError(f"output_fmt must be one of {', '.join(OUTPUT_FORMATS)}, not {output_fmt!r}")
        self.check_input(x)
        count = len(self.backbone.stages)
        take = stage_indices(count, indices)
        last = take[-1] if stop_early or intermediates_only else count - 1
        outputs = self.backbone.forward_stages(x, last=last)
        token_norm = self._token_norm() if norm else None

        def formatted(index: int, tokens: Tensor) -> Tensor:
            if token_norm is not None and index == count - 1:
                tokens = token_norm(tokens)
            return tokens.permute(0, 3, 1, 2) if output_fmt == "NCHW" else tokens

        intermediates = [formatted(i, outputs[i]) for i in take]
        if intermediates_only:
            return intermediates
        final = outputs[-1]
        return (final.permute(0, 3, 1, 2) if output_fmt == "NCHW" else final), intermediates

    def _token_norm(self) -> nn.Module | None:
        """The head's LayerNorm when it normalises every token before pooling, else None."""
        return self.head.norm if self.head is not None and self.head.norm_first else None


def stage_indices(count: int, indices: int | Sequence[int] | None) -> list[int]:
    """The sorted stage numbers ``indices`` names among ``count`` stages (timm's convention)."""
    if indices is None:
        return list(range(count))
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise InvalidArgumentError(f"indices={indices} asks for the last {indices} of {count} stages; "
                                       f"give 1 to {count}")
        return list(range(count - indices, count))
    return stage_numbers(indices, count)
