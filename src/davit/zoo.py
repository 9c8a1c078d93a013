"""Named models: architecture, class count and where their weights live."""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

from .errors import UnknownModelError
from .model.archs import ARCHS

_OPENMMLAB = "https://download.openmmlab.com/mmclassification/v0/davit/"


@dataclass(frozen=True)
class ModelInfo:
    """One entry of the model zoo.

    ``weights`` is a URL, an ``hf-hub:`` name or None (architecture only). ``metrics`` holds the
    published ImageNet-1k top-1/top-5 under mmpretrain's and the official semantics.
    """

    name: str
    arch: str
    num_classes: int = 1000
    weights: str | None = None
    metrics: dict | None = None


MODELS: dict[str, ModelInfo] = {}


def _register(info: ModelInfo) -> None:
    MODELS[info.name] = info


for _size, _file, _mm, _official in [
    ("tiny", "davit-tiny_3rdparty_in1k_20221116-700fdf7d.pth", (82.24, 96.13), (82.694, 96.264)),
    ("small", "davit-small_3rdparty_in1k_20221116-51a849a6.pth", (83.61, 96.75), (84.252, 96.942)),
    ("base", "davit-base_3rdparty_in1k_20221116-19e0d956.pth", (84.09, 96.82), (84.652, 97.020)),
]:
    _metrics = {"mmpretrain": {"top1": _mm[0], "top5": _mm[1]},
                "official": {"top1": _official[0], "top5": _official[1]}}
    _register(ModelInfo(f"davit-{_size}_3rdparty_in1k", _size, weights=_OPENMMLAB + _file,
                        metrics=_metrics))
    _register(ModelInfo(f"davit-{_size}_msft_in1k", _size,
                        weights=f"hf-hub:timm/davit_{_size}.msft_in1k", metrics=_metrics))
for _size in (name for name, arch in ARCHS.items() if arch.head):  # classifiers only
    _register(ModelInfo(f"davit-{_size}", _size))
for _size in ("base", "large"):  # Florence-2's vision encoders: towers, no classifier
    _register(ModelInfo(f"davit-florence2-{_size}", f"florence2-{_size}", num_classes=0,
                        weights=f"hf-hub:florence-community/Florence-2-{_size}"))


def list_models(pattern: str | None = None, pretrained: bool = False) -> list[str]:
    """Names of the registered models, optionally filtered by a glob ``pattern`` (``*tiny*``)
    or to those with published weights."""
    names = [n for n, info in MODELS.items() if info.weights or not pretrained]
    if pattern:
        glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatch(n, glob)]
    return sorted(names)


def get_model_info(name: str) -> ModelInfo:
    """The zoo entry for ``name``; an unknown name raises ValueError suggesting close names."""
    if name in MODELS:
        return MODELS[name]
    close = difflib.get_close_matches(name, list(MODELS) + list(ARCHS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}.{hint} `davit list` shows every name.")
