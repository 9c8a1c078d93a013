import pytest
import torch

from davit import fast_kernels
from davit.checkpoint.formats import to_davit
from davit.model import DaViT, DaViTClassifier

EXPECTED_PARAMS = {
    "tiny": 28_360_168, "small": 49_745_896, "base": 87_954_408,
    "large": 196_811_752, "huge": 348_922_856, "giant": 1_406_470_120,
}


@pytest.mark.parametrize("arch", list(EXPECTED_PARAMS))
def test_parameter_counts_exact(arch):
    with torch.device("meta"):
        model = DaViTClassifier(arch, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[arch]


def _golden_model(golden, golden_arch, semantics="official"):
    arch, num_classes = golden_arch
    model = DaViTClassifier(arch, num_classes=num_classes, semantics=semantics).eval()
    model.load_state_dict(to_davit(golden["state_dict_official"]))
    return model


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("name", ["x224", "x_odd"])
def test_official_logits_match_golden(golden, golden_arch, name, fast):
    model = _golden_model(golden, golden_arch)
    with torch.no_grad(), fast_kernels(fast):
        logits = model(golden["inputs"][name])
    torch.testing.assert_close(logits, golden["outputs"][f"official_logits_{name}"], atol=1e-5, rtol=0)


def test_mmpretrain_semantics_match_golden(golden, golden_arch):
    model = _golden_model(golden, golden_arch, semantics="mmpretrain")
    with torch.no_grad():
        logits = model(golden["inputs"]["x224"])
    torch.testing.assert_close(logits, golden["outputs"]["mmpretrain_logits_x224"], atol=1e-5, rtol=0)
    official = golden["outputs"]["official_logits_x224"]
    assert (logits - official).abs().max() > 0.1, "the two semantics must differ"


def test_extract_feat_shapes_and_strides():
    model = DaViTClassifier({"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1],
                             "num_heads": [1, 2, 4, 8]}, num_classes=5,
                            out_indices=(0, 1, 2, 3)).eval()
    x = torch.randn(2, 3, 97, 130)
    feats = model.extract_feat(x)
    assert isinstance(feats, tuple)
    assert [f.shape for f in feats] == [
        (2, 8, 25, 33), (2, 16, 13, 17), (2, 32, 7, 9), (2, 64, 4, 5)]
    pooled = model.extract_feat(x, stage="pre_logits")
    assert pooled.shape == (2, 64)
    torch.testing.assert_close(model.head.fc(pooled), model(x))


def test_frozen_stages_have_no_grad_and_stay_in_eval():
    backbone = DaViT({"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1],
                      "num_heads": [1, 2, 4, 8]}, frozen_stages=2, drop_path_rate=0.2)
    backbone.train()
    assert not any(p.requires_grad for p in backbone.stem.parameters())
    assert not any(p.requires_grad for s in backbone.stages[:2] for p in s.parameters())
    assert all(p.requires_grad for s in backbone.stages[2:] for p in s.parameters())
    assert not backbone.stages[1].training and backbone.stages[2].training


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    arch = {"embed_dims": [8, 16, 32, 64], "depths": [1, 2, 1, 1], "num_heads": [1, 2, 4, 8]}
    plain = DaViTClassifier(arch, num_classes=3)
    ckpt = DaViTClassifier(arch, num_classes=3, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    plain(x).sum().backward()
    ckpt(x).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    model = DaViTClassifier("tiny", num_classes=4, drop_path_rate=0.5)
    rates = [m.p for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates[0] == 0.0 and abs(rates[-1] - 0.5) < 1e-6 and len(rates) == 2 * 6
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.allclose(model(x), model(x))


@pytest.mark.parametrize("bad, message", [
    ({"embed_dims": [8, 16], "depths": [1, 1, 1], "num_heads": [1, 2]}, "one entry per stage"),
    ({"embed_dims": [8], "depths": [1], "num_heads": [3]}, "not divisible"),
    ("enormous", "unknown DaViT architecture"),
])
def test_bad_architectures_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        DaViTClassifier(bad)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="semantics"):
        DaViTClassifier("tiny", semantics="other")
    with pytest.raises(ValueError, match="out_indices"):
        DaViT("tiny", out_indices=(4,))
    with pytest.raises(ValueError, match="frozen_stages"):
        DaViT("tiny", frozen_stages=7)
