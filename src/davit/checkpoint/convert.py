"""Convert a checkpoint file between the DaViT key layouts."""
from __future__ import annotations

from pathlib import Path

from ..errors import InvalidArgumentError
from ..resolve import fetch_weights
from .formats import convert_state_dict, detect_format
from .io import load_state_dict_file, save_state_dict_file


def convert_file(src: str | Path, dst: str | Path, to: str, source_format: str | None = None) -> Path:
    """Read ``src`` (path, URL or hub name; format detected unless given) and write ``dst`` in
    format ``to`` as .safetensors or .pth (by its suffix)."""
    dst = Path(dst)
    if dst.suffix not in (".pth", ".pt", ".bin", ".safetensors"):
        raise InvalidArgumentError(f"output {dst} must end in .safetensors, .pth, .pt or .bin")
    state_dict = load_state_dict_file(fetch_weights(src))
    source_format = source_format or detect_format(state_dict)
    converted = convert_state_dict(state_dict, to=to, source=source_format)
    return save_state_dict_file(converted, dst, metadata={"format": to, "converted_from": source_format})
