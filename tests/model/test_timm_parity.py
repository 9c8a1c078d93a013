"""Parity with timm's DaViT (a test-only reference) on random weights converted from timm."""
import pytest
import torch

from tests.helpers import randomise_

timm = pytest.importorskip("timm")

from davit.checkpoint.formats import convert_state_dict, detect_format, to_davit  # noqa: E402
from davit.model import DaViTClassifier  # noqa: E402


def _randomised_timm(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
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
