"""The dense DaViT backbone in OpenMMLab model registries (mmdet, mmseg, mmpretrain).

:class:`DavitToolkitDaViT` is registered under the name ``"DavitToolkitDaViT"`` (mmpretrain's own
``DaViT`` keeps its name). It is an ``mmengine.model.BaseModule`` when mmengine is installed and a
plain ``nn.Module`` otherwise, wrapping :func:`davit.dense.backbone`: ``forward`` returns the tuple
of NCHW stage features that mmdet/mmseg necks take, frozen stages stay frozen after ``train()``,
and ``init_cfg=dict(type='Pretrained', checkpoint=...)`` reads any checkpoint this library reads.

A config loads it with ``custom_imports = dict(imports=['davit.dense.mmdet_plugin'],
allow_failed_imports=False)`` (or ``mmseg_plugin``, ``mmpretrain_plugin``), which calls
:func:`register_with` for that package.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor, nn

from ..checkpoint.load import load_backbone, load_checkpoint
from ..checkpoint.resolve import ModelSource
from ..errors import InvalidArgumentError, MissingDependencyError
from .backbone import DENSE_OUT_INDICES, backbone
from .detection import BackboneWeights

REGISTERED_NAME = "DavitToolkitDaViT"
# what each package needs installed: mmdet 3.3 and mmseg 1.2 need mmcv < 2.2 with its compiled ops
_INSTALL = {"mmdet": "mmengine 'mmcv>=2.0,<2.2' mmdet", "mmseg": "mmengine 'mmcv>=2.0,<2.2' mmsegmentation",
            "mmpretrain": "mmengine 'mmcv-lite>=2.0,<2.4' mmpretrain"}


def _base_module() -> type:
    """mmengine's ``BaseModule`` (``init_cfg``, ``init_weights`` bookkeeping), or ``nn.Module``
    so that this module imports without mmengine."""
    try:
        from mmengine.model import BaseModule
    except ImportError:
        return nn.Module
    return BaseModule


class DavitToolkitDaViT(_base_module()):  # type: ignore[misc]
    """The dense DaViT backbone (``self.body``, a :class:`~davit.dense.DenseBackbone`) for
    OpenMMLab models.

    Args:
        arch, pretrained, out_indices: :func:`davit.dense.backbone`'s (an architecture or zoo
            name; weights as a bool or any checkpoint source).
        frozen_stages, drop_path_rate, grad_checkpointing: the backbone's options.
        init_cfg: None, or ``dict(type='Pretrained', checkpoint=...)`` loaded by
            :meth:`init_weights` (after ``pretrained``) from a path, URL, ``hf-hub:`` or zoo name
            in any of :mod:`davit.checkpoint.formats`' layouts (classifier, Florence-2, official
            dense or mmdet checkpoints).
    """

    def __init__(self, arch: ModelSource = "tiny", pretrained: BackboneWeights = False,
                 out_indices: Iterable[int] = DENSE_OUT_INDICES, frozen_stages: int = -1,
                 drop_path_rate: float = 0.0, grad_checkpointing: bool = False,
                 init_cfg: Mapping[str, Any] | None = None) -> None:
        if init_cfg is not None and init_cfg.get("type") != "Pretrained":
            raise InvalidArgumentError(f"{REGISTERED_NAME} initialises its own weights; its init_cfg can only "
                                       f"be dict(type='Pretrained', checkpoint=...), got {dict(init_cfg)}")
        if init_cfg is not None and "checkpoint" not in init_cfg:
            raise InvalidArgumentError(f"{REGISTERED_NAME}'s Pretrained init_cfg needs a 'checkpoint'")
        super().__init__()
        self.init_cfg = dict(init_cfg) if init_cfg is not None else None
        self.body = backbone(arch, pretrained=pretrained, out_indices=tuple(out_indices),
                             frozen_stages=frozen_stages, drop_path_rate=drop_path_rate,
                             grad_checkpointing=grad_checkpointing)
        self.out_channels = self.body.out_channels

    def init_weights(self) -> None:
        """Load ``init_cfg``'s checkpoint into the backbone, if any (mmengine's model builders call
        this once; the other weights were initialised on construction)."""
        if self.init_cfg is not None:
            state_dict, _ = load_checkpoint(str(self.init_cfg["checkpoint"]))
            load_backbone(self.body, state_dict)
        self._is_init = True

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.body(x)


def register(registry: Any) -> type:
    """Add :class:`DavitToolkitDaViT` to an mmengine ``Registry`` (again is harmless); return it."""
    registry.register_module(name=REGISTERED_NAME, module=DavitToolkitDaViT, force=True)
    return DavitToolkitDaViT


def register_with(package: str) -> type:
    """Register the backbone in ``package``'s ``MODELS`` (``"mmdet"``, ``"mmseg"``,
    ``"mmpretrain"``), raising :class:`MissingDependencyError` when it cannot be imported."""
    if package not in _INSTALL:
        raise InvalidArgumentError(f"unknown OpenMMLab package {package!r}; choose one of {list(_INSTALL)}")
    try:
        registry = importlib.import_module(f"{package}.registry")
    except (ImportError, AssertionError) as error:  # OpenMMLab packages assert their mmcv version
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise MissingDependencyError(
            f"the DaViT {package} plugin needs {package} with mmengine and a compatible mmcv, which did not "
            f"import ({reason}): pip install {_INSTALL[package]}") from error
    return register(registry.MODELS)
