"""Weights and cards that can only give garbage are refused at load, in one line, on the user's path."""
from __future__ import annotations

import json

import pytest
import torch

from davit import get_model, save_pretrained
from davit.checkpoint.card import CARD_KEY, card_of
from davit.checkpoint.io import read_checkpoint_file, save_state_dict_file
from davit.checkpoint.load import load_checkpoint
from davit.cli.app import run_subcommand
from davit.errors import CheckpointError
from tests.paths import REPO

ARCH = '{"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}'
CAT = str(REPO / "demo" / "cat.jpg")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return get_model(ARCH, num_classes=3)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_where_a_user_loads_them(model, tmp_path, capsys, value):
    broken = get_model(ARCH, num_classes=3)
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.backbone.stages[1].blocks[0].spatial.attn.qkv.weight[0, 0] = value
    folder = save_pretrained(broken, tmp_path / "broken")
    with pytest.raises(CheckpointError, match="NaN or infinite weights in 1 tensor"):
        get_model(str(folder))
    assert run_subcommand("predict", [CAT, "--model", str(folder), "--device", "cpu", "--num-workers", "0"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "NaN or infinite weights" in error
    state_dict, _ = load_checkpoint(str(folder / "model.safetensors"), allow_non_finite=True)  # research use
    assert not bool(torch.isfinite(state_dict["backbone.stages.1.blocks.0.spatial.attn.qkv.weight"]).all())


@pytest.mark.parametrize(("field", "value", "message"), [
    ("std", [0.0, 57.12, 57.375], "std must be positive"),
    ("std", [-1.0, 57.12, 57.375], "std must be positive"),
    ("crop_size", 100_000, "crop_size must be an integer from 1 to 4096"),
    ("resize_edge", 0, "resize_edge must be an integer from 1 to 4096"),
    ("exact_size", [768, 10**9], "exact_size must be an integer from 1 to 4096"),
])
def test_impossible_card_values_are_refused_at_load(model, tmp_path, field, value, message):
    card = json.loads(card_of(model).to_json())
    card["preprocessing"][field] = value
    state_dict, _ = read_checkpoint_file(save_pretrained(model, tmp_path / "ok") / "model.safetensors")
    path = save_state_dict_file(state_dict, tmp_path / "bad.safetensors", metadata={CARD_KEY: json.dumps(card)})
    with pytest.raises(CheckpointError, match=message) as refused:
        get_model(str(path))
    assert "\n" not in str(refused.value)


class _Payload:  # a pickle that would run code on load
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("kind", ["object", "truncated"])
def test_refusals_never_advise_turning_safety_off(model, tmp_path, kind, capsys):
    path = tmp_path / f"{kind}.pth"
    if kind == "object":
        torch.save({"state_dict": model.state_dict(), "extra": _Payload()}, path)
    else:
        torch.save(model.state_dict(), path)
        path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(str(path))
    message = str(refused.value)
    assert "weights_only" not in message and "\n" not in message and str(path) in message
    assert "pwned" not in capsys.readouterr().out
