"""Parity with timm's DaViT (a test-only reference) on random weights converted from timm."""
import pytest
import torch

from tests.helpers import randomise_

timm = pytest.importorskip("timm")

from davit.checkpoint.formats import convert_state_dict, detect_format, to_davit  # noqa: E402
from davit.errors import InvalidArgumentError  # noqa: E402
from davit.model import DaViTClassifier, build_model  # noqa: E402


def _randomised_timm(name: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **options).eval()
    return randomise_(model)


@pytest.fixture(scope="module", params=["tiny", "small", "base"])
def pair(request):
    reference = _randomised_timm(f"davit_{request.param}")
    state = reference.state_dict()
    assert detect_format(state) == "timm"
    ours = DaViTClassifier(request.param, num_classes=1000, out_indices=(0, 1, 2, 3)).eval()
    ours.load_state_dict(to_davit(state))
    return reference, ours


@pytest.mark.parametrize("size", [(224, 224), (97, 130)])
def test_logits_match_timm(pair, size):
    reference, ours = pair
    torch.manual_seed(1)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    scale = expected.abs().max()
    assert (actual - expected).abs().max() <= 1e-4 * scale


def test_extract_feat_matches_timm_intermediates(pair):
    reference, ours = pair
    x = torch.randn(1, 3, 120, 164)
    with torch.no_grad():
        expected = reference.forward_intermediates(x, indices=4, intermediates_only=True)
        actual = ours.extract_feat(x)
    assert len(actual) == 4
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        assert (a - e).abs().max() <= 1e-4 * e.abs().max()


def test_timm_state_dict_round_trips_through_every_format(pair):
    reference, _ = pair
    state = reference.state_dict()
    official = convert_state_dict(state, to="official")
    mm = convert_state_dict(official, to="mmpretrain")
    back = convert_state_dict(mm, to="timm")
    assert list(back) == list(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("options", [{}, {"indices": 2}, {"indices": [0, -1]}, {"indices": [1], "stop_early": True},
                                     {"indices": 3, "intermediates_only": True}, {"norm": True}])
def test_forward_intermediates_equals_timms(pair, options):
    reference, ours = pair
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected, actual = reference.forward_intermediates(x, **options), ours.forward_intermediates(x, **options)
    if not options.get("intermediates_only"):
        (expected_final, expected), (actual_final, actual) = expected, actual
        assert actual_final.shape == expected_final.shape
        assert (actual_final - expected_final).abs().max() <= 1e-4 * expected_final.abs().max()
    assert [a.shape for a in actual] == [e.shape for e in expected]
    for a, e in zip(actual, expected):
        assert (a - e).abs().max() <= 1e-4 * e.abs().max()


def test_forward_intermediates_nhwc_feeds_the_head_and_bad_indices_are_refused(pair):
    _, ours = pair
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, stages = ours.forward_intermediates(x, output_fmt="NHWC")
        assert torch.allclose(ours.forward_head(final), ours(x), atol=1e-5)
        assert [s.shape[-1] for s in stages] == list(ours.backbone.embed_dims)
    for indices, message in ((5, "last 5 of 4 stages"), ([4], "out of range"), ([], "at least one")):
        with pytest.raises(InvalidArgumentError, match=message):
            ours.forward_intermediates(x, indices=indices)
    with pytest.raises(InvalidArgumentError, match="output_fmt must be one of NCHW, NHWC"):
        ours.forward_intermediates(x, output_fmt="NLC")


def test_florence2_tower_intermediates_equal_timms():
    reference = _randomised_timm("davit_base_fl", num_classes=0)
    ours = build_model("florence2-base", num_classes=0, projection_dim=0).eval()
    # timm keeps an unused head.norm on its tower
    tower = {k: v for k, v in to_davit(reference.state_dict()).items() if not k.startswith("head.")}
    ours.load_state_dict(tower)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = reference.forward_intermediates(x, intermediates_only=True)
        actual = ours.forward_intermediates(x, intermediates_only=True)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and (a - e).abs().max() <= 1e-4 * e.abs().max()


def test_grad_checkpointing_gives_the_same_gradients(pair):
    _, ours = pair
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for enable in (False, True):
        ours.set_grad_checkpointing(enable)
        ours.zero_grad()
        ours(x).sum().backward()
        grads.append(next(ours.backbone.stem.parameters()).grad.clone())
    ours.set_grad_checkpointing(False)
    ours.zero_grad()
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
