"""DaViT encoders for segmentation_models_pytorch (smp): UPerNet, FPN, Unet and its other decoders.

smp builds a model's encoder from its ``encoders`` registry (``{"encoder": class, "params": ...,
"pretrained_settings": {weights: {"repo_id", "revision"}}}``, as of smp 0.6), downloads a
requested ``encoder_weights`` entry's ``model.safetensors`` from the Hugging Face Hub and hands it
to the encoder's ``load_state_dict``. :func:`register_encoders` (run when :mod:`davit.dense` is
imported and smp is installed) adds ``davit-tiny``, ``davit-small``, ``davit-base``,
``davit-florence2-base`` and ``davit-florence2-large``, whose weights are the zoo's Hugging Face
checkpoints read through this library's format conversion; :func:`register_encoder` adds an
encoder of any other architecture (a small one for small data, say). :func:`segmentation_model`
builds the same models with any weights the dense backbone takes (the zoo's, a file) and backbone
options.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from torch import Tensor, nn

from ..checkpoint.formats import to_davit
from ..checkpoint.hub import HF_PREFIX, download_hf_file
from ..checkpoint.load import load_backbone
from ..checkpoint.resolve import ModelSource
from ..errors import DownloadError, InvalidArgumentError, require
from ..zoo import get_model_info
from .backbone import backbone
from .detection import BACKBONE_OPTIONS, BackboneWeights

# smp encoder name -> (architecture, zoo entry of its weights, the encoder_weights value naming them)
ENCODERS: dict[str, tuple[str, str, str]] = {
    "davit-tiny": ("tiny", "davit-tiny_msft_in1k", "imagenet"),
    "davit-small": ("small", "davit-small_msft_in1k", "imagenet"),
    "davit-base": ("base", "davit-base_msft_in1k", "imagenet"),
    "davit-florence2-base": ("florence2-base", "davit-florence2-base", "florence2"),
    "davit-florence2-large": ("florence2-large", "davit-florence2-large", "florence2"),
}
_CUSTOM: dict[str, ModelSource] = {}  # encoders added by register_encoder: name -> architecture
_FEATURE = "DaViT segmentation models"


def _encoder_mixin() -> type:
    """smp's ``EncoderMixin`` (``out_channels``, ``output_stride``, ``set_in_channels``), or a
    plain base without smp so that :mod:`davit.dense` imports for detection alone."""
    try:
        from segmentation_models_pytorch.encoders._base import EncoderMixin
    except ImportError:
        return object
    return EncoderMixin


class DaViTEncoder(nn.Module, _encoder_mixin()):  # type: ignore[misc]
    """A dense DaViT backbone as an smp encoder: ``forward`` returns the features at strides 1
    (the input), 2, 4, 8, 16 and 32 for ``depth`` 5. DaViT starts at stride 4, so the stride-2
    feature is empty (0 channels), as smp's own Mix Transformer encoders do; decoders that use
    it (Unet) then upsample without a skip connection there.

    Args:
        arch: what :func:`davit.dense.backbone` takes (an architecture or zoo name, a checkpoint).
        depth: 2 to 5; the encoder runs the first ``depth - 1`` stages.
        output_stride: 32 only: DaViT's downsampling patch embeddings cannot be dilated.
        pretrained, backbone_options: :func:`davit.dense.backbone`'s.
    """

    _is_torch_scriptable = False

    def __init__(self, arch: ModelSource, depth: int = 5, output_stride: int = 32,
                 pretrained: BackboneWeights = None, **backbone_options: Any) -> None:
        if not 2 <= depth <= 5:
            raise InvalidArgumentError(f"a DaViT encoder's depth must be 2 to 5 (4 stages after the "
                                       f"stride-2 level), got {depth}")
        if output_stride != 32:
            raise InvalidArgumentError(f"DaViT encoders have output stride 32 (no dilation), got {output_stride}")
        super().__init__()
        self.backbone = backbone(arch, pretrained=pretrained, out_indices=tuple(range(depth - 1)),
                                 **backbone_options)
        self._depth = depth
        self._in_channels = 3
        self._out_channels = [3, 0, *self.backbone.out_channels]
        self._output_stride = output_stride

    def forward(self, x: Tensor) -> list[Tensor]:
        n, _, height, width = x.shape
        return [x, x.new_empty((n, 0, height // 2, width // 2)), *self.backbone(x)]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any:
        """Load this encoder's own state dict, or a DaViT checkpoint in any layout the library reads
        (timm's, Florence-2's ...): smp hands its downloaded ``encoder_weights`` here."""
        if set(state_dict) == set(self.state_dict()):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        load_backbone(self.backbone, to_davit(state_dict))
        return None


class _HubWeights(dict):
    """smp's ``pretrained_settings`` entry of one weights name (``{"repo_id", "revision"}``). smp reads
    ``repo_id`` just before it downloads, with huggingface_hub's retries (~23 s offline, ending in a
    bare ``LocalEntryNotFoundError``); reading it here first fetches (or finds in the cache) the
    files smp then asks for, through this library's quick probe, so that an offline machine fails at
    once with the one-line :class:`~davit.errors.DownloadError` naming the cache folder."""

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        if key == "repo_id":
            name = f"{HF_PREFIX}{value}" + (f"@{self['revision']}" if self.get("revision") else "")
            try:
                for filename in ("config.json", "model.safetensors"):
                    download_hf_file(name, (filename,))
            except DownloadError as error:
                raise DownloadError(f"{error}; or build the encoder without them (encoder_weights=None)") from None
        return value


def register_encoders() -> list[str]:
    """Add the DaViT encoders to smp's registry (again is harmless) and return their names."""
    require("segmentation_models_pytorch", "dense", _FEATURE)
    from segmentation_models_pytorch.encoders import encoders

    for name, (arch, weights, key) in ENCODERS.items():
        repo = str(get_model_info(weights).weights).removeprefix("hf-hub:")
        encoders[name] = {"encoder": DaViTEncoder, "params": {"arch": arch},
                          "pretrained_settings": {key: _HubWeights(repo_id=repo, revision=None)}}
    return list(ENCODERS)


def register_encoder(name: str, arch: ModelSource) -> str:
    """Add an smp encoder ``name`` of the architecture ``arch`` (a name, a dict of
    :class:`~davit.model.DaViTArch` fields), without published weights: smp builds it randomly,
    :func:`segmentation_model` with weights from a checkpoint. Returns ``name``."""
    require("segmentation_models_pytorch", "dense", _FEATURE)
    from segmentation_models_pytorch.encoders import encoders

    if name in ENCODERS:
        raise InvalidArgumentError(f"{name!r} is one of the built-in DaViT encoders; choose another name")
    encoders[name] = {"encoder": DaViTEncoder, "params": {"arch": arch}, "pretrained_settings": {}}
    _CUSTOM[name] = arch
    return name


def segmentation_model(decoder: str, encoder_name: str, classes: int = 1,
                       backbone_weights: BackboneWeights = None, **options: Any) -> nn.Module:
    """An smp model (``decoder``: ``"upernet"``, ``"fpn"``, ``"unet"`` ... as
    :func:`smp.create_model` names them) on a DaViT encoder, with weights from anywhere the dense
    backbone reads them: ``backbone_weights`` True for the zoo's (those ``encoder_weights`` names),
    or a checkpoint path, URL, folder or ``hf-hub:`` name.

    ``options`` ``frozen_stages``, ``drop_path_rate``, ``grad_checkpointing`` go to the backbone
    (smp's registry cannot pass them), the rest to smp (``encoder_depth``, ``in_channels`` ...).
    """
    require("segmentation_models_pytorch", "dense", _FEATURE)
    import segmentation_models_pytorch as smp

    if encoder_name not in ENCODERS and encoder_name not in _CUSTOM:
        raise InvalidArgumentError(f"unknown DaViT encoder {encoder_name!r}; choose one of "
                                   f"{[*ENCODERS, *_CUSTOM]} or add it with register_encoder")
    if encoder_name in _CUSTOM and backbone_weights is True:
        raise InvalidArgumentError(f"the encoder {encoder_name!r} has no published weights; pass a checkpoint "
                                   "as backbone_weights")
    register_encoders()
    body_options = {key: value for key, value in options.items() if key in BACKBONE_OPTIONS}
    smp_options = {key: value for key, value in options.items() if key not in BACKBONE_OPTIONS}
    model = smp.create_model(decoder, encoder_name=encoder_name, encoder_weights=None, classes=classes,
                             **smp_options)
    if backbone_weights or body_options:  # rebuild the encoder: smp passes neither to it
        # the built-in encoders' weights are their zoo entries'; custom ones have none (checked above)
        arch, zoo_name = ENCODERS[encoder_name][:2] if encoder_name in ENCODERS else (_CUSTOM[encoder_name], "")
        built = cast(DaViTEncoder, model.encoder)
        encoder = DaViTEncoder(zoo_name if backbone_weights is True else arch, built._depth,
                               pretrained=backbone_weights, **body_options)
        # smp's EncoderMixin method: adapts the stem to other input channels, keeping the weights
        cast(Any, encoder).set_in_channels(built._in_channels, pretrained=bool(backbone_weights))
        model.encoder = encoder
    return model
