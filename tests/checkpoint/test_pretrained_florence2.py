"""save_pretrained of a Florence-2 encoder: get_model(folder) rebuilds it, `davit embed` reads it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import davit
from davit.model import Florence2Encoder
from tests.helpers import randomise_
from tests.model.test_blocks import SMALL_FLORENCE2


@pytest.mark.parametrize(("projection_dim", "num_classes"), [(24, 0), (0, 0), (24, 3), (0, 2)])
def test_florence2_round_trip(tmp_path, projection_dim, num_classes):
    torch.manual_seed(0)
    model = randomise_(Florence2Encoder(SMALL_FLORENCE2, projection_dim=projection_dim,
                                        num_classes=num_classes)).eval()
    davit.save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "model_type" not in config and "davit" in config
    loaded = davit.get_model(str(tmp_path))
    assert type(loaded) is Florence2Encoder
    assert loaded.projection_dim == projection_dim and (loaded.projector is None) == (projection_dim == 0)
    assert loaded.num_classes == num_classes
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        if projection_dim:
            torch.testing.assert_close(loaded.encode_image(x), model.encode_image(x), rtol=0, atol=0)
            torch.testing.assert_close(loaded.embed(x), model.embed(x), rtol=0, atol=0)


def test_embed_cli_reads_a_saved_encoder(tmp_path):
    from davit.cli import main

    torch.manual_seed(0)
    model = randomise_(Florence2Encoder(SMALL_FLORENCE2, projection_dim=24)).eval()
    folder = davit.save_pretrained(model, tmp_path / "model")
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "e.npy"
    assert main(["embed", str(image), "--model", str(folder), "--out", str(out), "--device", "cpu",
                 "--num-workers", "0"]) == 0
    loaded = davit.get_model(str(folder))
    x = loaded.card.preprocessing.transform()(str(image))[None]
    with torch.no_grad():
        expected = model.embed(x).numpy()
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-5)
