"""Variants are table entries: the architecture and semantics records, their checks and dicts."""
import dataclasses

import pytest
import torch

from davit.errors import InvalidArgumentError, UnknownModelError
from davit.model import ARCHS, SEMANTICS, SEMANTICS_TABLE, DaViT, DaViTArch, DaViTClassifier, resolve_arch
from davit.zoo import list_models

CLASSIFIERS = ("tiny", "small", "base", "large", "huge", "giant")


def test_classification_archs_have_davits_layout():
    for name in CLASSIFIERS:
        arch = ARCHS[name]
        assert (arch.patch_kernels, arch.patch_strides, arch.patch_paddings) == ((7, 2, 2, 2), (4, 2, 2, 2),
                                                                                  (3, 0, 0, 0))
        assert arch.patch_norm_first == (False, True, True, True)
        assert arch.pad_to_stride and arch.head and not arch.out_norms
        assert arch.channel_attention == "davit"


@pytest.mark.parametrize("name, dims, heads", [
    ("florence2-base", (128, 256, 512, 1024), (4, 8, 16, 32)),
    ("florence2-large", (256, 512, 1024, 2048), (8, 16, 32, 64)),
])
def test_florence2_towers_are_entries(name, dims, heads):
    arch = ARCHS[name]
    assert (arch.embed_dims, arch.depths, arch.num_heads, arch.window_size) == (dims, (1, 1, 9, 1), heads, 12)
    assert (arch.patch_kernels, arch.patch_strides, arch.patch_paddings) == ((7, 3, 3, 3), (4, 2, 2, 2),
                                                                              (3, 1, 1, 1))
    assert arch.patch_norm_first == (False, True, True, True)
    assert arch.channel_attention == "florence2" and not arch.head and not arch.pad_to_stride


def test_florence2_base_backbone_has_transformers_parameter_count():
    """90,368,000 is the size of transformers' Florence2VisionBackbone for Florence-2 base."""
    with torch.device("meta"):
        backbone = DaViT("florence2-base")
    assert sum(p.numel() for p in backbone.parameters()) == 90_368_000


def test_florence2_towers_are_zoo_encoders_not_classifiers():
    assert [name for name in list_models() if "florence" in name] == ["davit-florence2-base",
                                                                      "davit-florence2-large"]
    assert {f"davit-{name}" for name in CLASSIFIERS} <= set(list_models())


def test_architectures_without_a_head_are_not_classifiers():
    with pytest.raises(InvalidArgumentError, match="no classification head"):
        DaViTClassifier("florence2-base")


@pytest.mark.parametrize("name", list(ARCHS))
def test_to_dict_round_trips(name):
    arch = ARCHS[name]
    as_lists = {k: list(v) if isinstance(v, tuple) else v for k, v in arch.to_dict().items()}
    assert resolve_arch(arch.to_dict()) == arch
    assert resolve_arch(as_lists) == arch


def test_dicts_take_the_new_fields_and_default_to_davits_layout():
    arch = resolve_arch({"embed_dims": [8, 16], "depths": [1, 1], "num_heads": [1, 2],
                         "patch_kernels": [5, 3], "patch_paddings": [2, 1], "channel_attention": "florence2",
                         "out_norms": True})
    assert arch.patch_kernels == (5, 3) and arch.patch_strides == (4, 2) and arch.patch_paddings == (2, 1)
    assert arch.patch_norm_first == (False, True) and arch.channel_attention == "florence2"
    assert resolve_arch({"embed_dims": [8], "depths": [1], "num_heads": [1]}).patch_kernels == (7,)


@pytest.mark.parametrize("bad, message", [
    ({"embed_dims": [8], "depths": [1], "num_heads": [1], "patch_size": [4]},
     r"unknown architecture fields \['patch_size'\]"),
    ({"embed_dims": [8], "depths": [1]}, "needs"),
    ({"embed_dims": [8, 16], "depths": [1, 1], "num_heads": [1, 2], "patch_strides": [4]}, "one entry per stage"),
    ({"embed_dims": [8], "depths": [1], "num_heads": [1], "patch_strides": [0]}, "strides must be positive"),
    ({"embed_dims": [8], "depths": [1], "num_heads": [1], "patch_paddings": [-1]}, "must not be negative"),
    ({"embed_dims": [8], "depths": [0], "num_heads": [1]}, "at least one block"),
    ({"embed_dims": [], "depths": [], "num_heads": []}, "at least one stage"),
    ({"embed_dims": [8], "depths": [1], "num_heads": [1], "channel_attention": "v3"}, "channel_attention"),
    ({"embed_dims": [8], "depths": [1], "num_heads": [1], "window_size": 0}, "window_size"),
    ({"embed_dims": ["a"], "depths": [1], "num_heads": [1]}, "embed_dims"),
])
def test_bad_fields_are_refused_with_invalid_argument(bad, message):
    with pytest.raises(InvalidArgumentError, match=message):
        resolve_arch(bad)


def test_unknown_names_raise_unknown_model():
    with pytest.raises(UnknownModelError, match="unknown DaViT architecture 'nano'"):
        resolve_arch("nano")
    with pytest.raises(InvalidArgumentError, match="semantics"):
        DaViT({"embed_dims": [8], "depths": [1], "num_heads": [1]}, semantics="timm")


def test_semantics_are_entries():
    assert SEMANTICS == ("official", "mmpretrain")
    assert not SEMANTICS_TABLE["official"].stem_same_padding and not SEMANTICS_TABLE["official"].head_norm_first
    assert SEMANTICS_TABLE["mmpretrain"].stem_same_padding and SEMANTICS_TABLE["mmpretrain"].head_norm_first
    model = DaViTClassifier({"embed_dims": [8], "depths": [1], "num_heads": [1]}, num_classes=2,
                            semantics="mmpretrain", out_indices=(0,))
    assert model.head.norm_first and model.backbone.stem.same_padding


def test_out_norms_normalise_each_output_stage():
    arch = {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}
    torch.manual_seed(0)
    plain = DaViT(arch, out_indices=(1, 3)).eval()
    normed = DaViT({**arch, "out_norms": True}, out_indices=(1, 3)).eval()
    extra = set(normed.state_dict()) - set(plain.state_dict())
    assert extra == {f"out_norms.{i}.{p}" for i in (1, 3) for p in ("weight", "bias")}
    normed.load_state_dict({**plain.state_dict(), **{k: normed.state_dict()[k] for k in extra}})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for feature, reference, dim in zip(normed(x), plain(x), (16, 64)):
            expected = torch.nn.functional.layer_norm(reference.permute(0, 2, 3, 1), (dim,)).permute(0, 3, 1, 2)
            torch.testing.assert_close(feature, expected, rtol=0, atol=1e-5)


def test_records_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ARCHS["tiny"].window_size = 3  # type: ignore[misc]
    assert isinstance(ARCHS["tiny"], DaViTArch)
