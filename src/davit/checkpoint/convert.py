"""Convert a checkpoint file between the DaViT key layouts, its model card kept (or, for weights
without one, synthesised from the zoo entry or the tensors' shapes)."""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import InvalidArgumentError
from ..zoo import MODELS
from .card import ModelCard, card_from_metadata, default_card, guessed_card
from .formats import detect_format, from_davit, to_davit
from .io import read_checkpoint_file, save_state_dict_file
from .resolve import fetch_weights

logger = logging.getLogger("davit")


def convert_file(src: str | Path, dst: str | Path, to: str, source_format: str | None = None) -> Path:
    """Read ``src`` (path, URL, folder, hub name or zoo name; format detected unless given) and
    write ``dst`` in format ``to`` as .safetensors or .pth (by its suffix)."""
    dst = Path(dst)
    if dst.suffix not in (".pth", ".pt", ".bin", ".safetensors"):
        raise InvalidArgumentError(f"output {dst} must end in .safetensors, .pth, .pt or .bin")
    path = fetch_weights(src)
    state_dict, meta = read_checkpoint_file(path)
    source_format = source_format or detect_format(state_dict)
    ours = to_davit(state_dict, source_format)
    card = card_from_metadata(meta, str(path)) or _synthesised_card(str(src), ours)
    metadata = {"format": to, "converted_from": source_format}
    if card is None:
        logger.warning("%s has no model card and no standard architecture: %s is written "
                       "without one", src, dst)
    else:
        card.check(ours, str(path))
        metadata.update(card.to_metadata())
    return save_state_dict_file(from_davit(ours, to), dst, metadata=metadata)


def _synthesised_card(src: str, state_dict: dict) -> ModelCard | None:
    """The card of weights that carry none: the zoo entry's, else the tensors' standard one."""
    if src in MODELS:
        return default_card(MODELS[src].arch, MODELS[src].num_classes)
    return guessed_card(state_dict)
