"""Florence-2's vision encoder against transformers' Florence2Model (random weights), its sizes,
refusals, fine-tuning head and zoo entries."""
import re

import pytest
import torch

from davit import Florence2Encoder, get_model, list_models
from davit.checkpoint.card import FLORENCE2_PREPROCESSING
from davit.errors import InvalidArgumentError
from davit.model import ARCHS, build_model
from tests.helpers import randomise_
from tests.model.test_blocks import SMALL_FLORENCE2, _davit_keys

SMALL_PROJECTION = 24
TEXT = {"vocab_size": 64, "d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "max_position_embeddings": 32}


def _vision_config(arch: dict, projection_dim: int) -> dict:
    return {"embed_dim": arch["embed_dims"], "depths": arch["depths"], "num_heads": arch["num_heads"],
            "num_groups": arch["num_heads"], "window_size": arch["window_size"], "drop_path_rate": 0.0,
            "projection_dim": projection_dim}


def _reference(arch: dict, projection_dim: int) -> torch.nn.Module:
    """transformers' Florence2Model with a tiny language model and random, non-trivial weights."""
    transformers = pytest.importorskip("transformers")
    modeling = pytest.importorskip("transformers.models.florence2.modeling_florence2")
    config = transformers.Florence2Config(text_config=TEXT, vision_config=_vision_config(arch, projection_dim))
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = modeling.Florence2Model(config).eval()
    return randomise_(model, skip_prefix="language_model.")


def _ours(state: dict) -> dict:
    """transformers' Florence2Model keys (tower and projector) in this library's layout; the
    checkpoint converters of davit.checkpoint do this for published files."""
    tower = {k[len("vision_tower."):]: v for k, v in state.items() if k.startswith("vision_tower.")}
    converted = {f"backbone.{k}": v for k, v in _davit_keys(tower).items()}
    converted.update({re.sub(r"^multi_modal_projector\.", "projector.", k): v for k, v in state.items()
                      if k.startswith("multi_modal_projector.")})
    return converted


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.fixture(scope="module")
def small_pair():
    reference = _reference(SMALL_FLORENCE2, SMALL_PROJECTION)
    ours = Florence2Encoder(SMALL_FLORENCE2, projection_dim=SMALL_PROJECTION).eval()
    ours.load_state_dict(_ours(reference.state_dict()))
    return reference, ours


@pytest.mark.parametrize("size", [(384, 384), (397, 289), (416, 352)])
def test_small_encoder_matches_transformers(small_pair, size):
    """A tower with Florence-2's layout (narrow, shallow, window 4): map and image tokens."""
    reference, ours = small_pair
    torch.manual_seed(1)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = reference.get_image_features(x)
        _close(ours(x), expected.last_hidden_state)
        tokens = ours.encode_image(x)
        _close(tokens, expected.pooler_output)
        _close(ours.extract_feat(x)[-1], expected.last_hidden_state)
        torch.testing.assert_close(ours.embed(x), tokens[:, 0])
        torch.testing.assert_close(ours.embed(x, pooled=False), tokens)
    height, width = -(-size[0] // 32), -(-size[1] // 32)
    assert tokens.shape == (2, 1 + height * width, SMALL_PROJECTION)


def test_base_encoder_matches_transformers():
    """Florence-2 base itself (projection 768) at 384 x 384: 1 + 12 * 12 tokens."""
    reference = _reference(ARCHS["florence2-base"].to_dict(), 768)
    ours = Florence2Encoder("florence2-base").eval()
    ours.load_state_dict(_ours(reference.state_dict()))
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        expected = reference.get_image_features(x)
        features = ours.forward_features(x)  # what forward and encode_image compute from
        tokens = ours.projector(features)
    _close(features.permute(0, 3, 1, 2), expected.last_hidden_state)
    _close(tokens, expected.pooler_output)
    assert tokens.shape == (1, 145, 768)


def test_temporal_table_is_transformers():
    reference = _reference(SMALL_FLORENCE2, SMALL_PROJECTION)
    ours = Florence2Encoder(SMALL_FLORENCE2, projection_dim=SMALL_PROJECTION)
    expected = reference.multi_modal_projector.visual_temporal_embed.pos_idx_to_embed
    torch.testing.assert_close(ours.projector.visual_temporal_embed.pos_idx_to_embed, expected)


@pytest.mark.parametrize("size, tower, projector, projection_dim", [
    ("base", 90_368_000, 941_568, 768), ("large", 360_632_320, 2_406_400, 1024)])
def test_sizes_and_keys_are_transformers(size, tower, projector, projection_dim):
    """Counts and keys of the published Florence-2 checkpoints (the fixture lists them); the
    projector's count includes its temporal table, a buffer stored in the checkpoints."""
    with torch.device("meta"):
        model = Florence2Encoder(f"florence2-{size}")
    state = model.state_dict()
    assert model.projection_dim == projection_dim
    assert sum(p.numel() for p in model.backbone.parameters()) == tower
    assert sum(v.numel() for k, v in state.items() if k.startswith("projector.")) == projector
    assert sum(p.numel() for p in model.projector.parameters()) == projector - 100 * model.num_features
    fixture = f"tests/fixtures/keys/florence2-{size}.transformers.txt"
    with open(fixture) as lines:
        theirs = dict(line.split(" ", 1) for line in lines.read().splitlines())
    expected = {re.sub(r"^model\.multi_modal_projector\.", "projector.", k): v.strip()
                for k, v in theirs.items() if k.startswith("model.multi_modal_projector.")}
    assert {k: str(list(v.shape)).replace(" ", "") for k, v in state.items() if k.startswith("projector.")} \
        == {k: v.replace(" ", "") for k, v in expected.items()}


@pytest.mark.parametrize("size", [(31, 64), (64, 20)])
def test_side_below_32_is_refused(small_pair, size):
    _, ours = small_pair
    x = torch.randn(1, 3, *size)
    for method in (ours, ours.encode_image, ours.extract_feat):
        with pytest.raises(InvalidArgumentError, match="at least 32 pixels"):
            method(x)


def test_side_beyond_position_table_is_refused(small_pair):
    _, ours = small_pair
    with pytest.raises(InvalidArgumentError, match="at most 50 x 50"):
        ours.encode_image(torch.randn(1, 3, 32, 51 * 32))


def test_without_projector_encode_image_says_why():
    model = Florence2Encoder(SMALL_FLORENCE2, projection_dim=0)
    assert model.projector is None and not [k for k in model.state_dict() if k.startswith("projector.")]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 64, 2, 2)
    for method in (model.encode_image, model.embed):
        with pytest.raises(InvalidArgumentError, match="no projector"):
            method(torch.randn(1, 3, 64, 64))


def test_classification_head_trains_one_step():
    torch.manual_seed(0)
    model = Florence2Encoder(SMALL_FLORENCE2, num_classes=3).train()
    assert {k for k in model.state_dict() if k.startswith("head.")} == {
        "head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"}
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.head.fc.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert model(x).shape == (4, 3) and torch.isfinite(loss)
    assert not torch.equal(before, model.head.fc.weight)
    model.reset_classifier(0)
    assert model.head is None and model(x).dim() == 4


def test_a_classifier_arch_is_refused():
    with pytest.raises(InvalidArgumentError, match="has a classification head"):
        Florence2Encoder("tiny")


def test_build_model_picks_the_class():
    with torch.device("meta"):
        assert isinstance(build_model("florence2-base", 0), Florence2Encoder)
        assert not isinstance(build_model("tiny"), Florence2Encoder)
    with pytest.raises(InvalidArgumentError, match="semantics"):
        build_model(SMALL_FLORENCE2, 0, semantics="mmpretrain")


def test_zoo_entries_build_with_florence2_preprocessing():
    assert {"davit-florence2-base", "davit-florence2-large"} <= set(list_models("florence2", pretrained=True))
    model = get_model("davit-florence2-base")
    assert isinstance(model, Florence2Encoder) and model.head is None and model.projection_dim == 768
    assert model.card.num_classes == 0 and model.card.preprocessing == FLORENCE2_PREPROCESSING
    assert model.card.preprocessing.exact_size == (768, 768)
    assert model.card.preprocessing.interpolation == "bicubic"
    headed = get_model("florence2-base", num_classes=3)
    assert isinstance(headed, Florence2Encoder) and headed.num_classes == 3


def test_weights_without_projector_build_the_tower(tmp_path, small_pair):
    """timm's tower has no projector (and a head norm without classifier): it loads as a tower
    whose encode_image says why it cannot encode."""
    _, ours = small_pair
    state = {k: v for k, v in ours.state_dict().items() if k.startswith("backbone.")}
    state.update({"head.norm.weight": torch.ones(64), "head.norm.bias": torch.zeros(64)})
    path = tmp_path / "tower.pth"
    torch.save(state, path)
    tower = get_model(SMALL_FLORENCE2, pretrained=path)
    assert isinstance(tower, Florence2Encoder) and tower.projector is None and tower.head is None
    with pytest.raises(InvalidArgumentError, match="no projector"):
        tower.encode_image(torch.randn(1, 3, 64, 64))
    headed = get_model(SMALL_FLORENCE2, pretrained=path, num_classes=3)
    torch.testing.assert_close(headed.head.norm.weight, torch.ones(64))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tower(x), ours(x))


def test_extract_feat_is_one_api_for_towers_and_classifiers():
    from davit.errors import InvalidArgumentError
    from davit.model import build_model
    from tests.helpers import MINI_FLORENCE2

    x = torch.rand(1, 3, 64, 64)
    tuned = build_model(MINI_FLORENCE2, num_classes=3, projection_dim=0).eval()
    with torch.no_grad():
        assert [m.shape[1] for m in tuned.extract_feat(x)] == [64]  # out_indices (3,)
        assert tuned.extract_feat(x, stage="pre_logits").shape == (1, 64)
    tower = build_model(MINI_FLORENCE2, num_classes=0, projection_dim=0)
    with pytest.raises(InvalidArgumentError, match="no classification head"):
        tower.extract_feat(x, stage="pre_logits")
    with pytest.raises(InvalidArgumentError, match="stage must be 'backbone' or 'pre_logits'"):
        tower.extract_feat(x, stage="neck")
