"""engine.embed: pooled and token embeddings of paths, PIL images and arrays, and the output files."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from davit.checkpoint.card import ModelCard, Preprocessing
from davit.engine.embed import embed_images, load_embeddings, save_embeddings
from davit.errors import ImageLoadError, InvalidArgumentError
from davit.model import ARCHS, DaViTClassifier
from davit.model.florence2 import Florence2Encoder
from tests.engine.test_infer import write_bad, write_images

SMALL_FLORENCE = dataclasses.replace(ARCHS["florence2-base"], embed_dims=(16, 32, 64, 128),
                                     depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))


def small_encoder(projection_dim: int | None = 48) -> Florence2Encoder:
    torch.manual_seed(0)
    model = Florence2Encoder(SMALL_FLORENCE, projection_dim=projection_dim).eval()
    model.card = ModelCard(SMALL_FLORENCE, 0, preprocessing=Preprocessing(64, 64))
    return model


def test_pooled_and_token_embeddings_match_the_model(tmp_path):
    model = small_encoder()
    paths = write_images(tmp_path / "imgs", 3)
    pooled = embed_images(model, [str(tmp_path / "imgs")], batch_size=2)
    tokens = embed_images(model, paths, pooled=False, batch_size=2)
    assert pooled.shape == (3, 48) and pooled.dtype == np.float32
    assert tokens.shape == (3, 1 + 2 * 2, 48)
    x = torch.stack([model.card.preprocessing.transform()(p) for p in paths])
    with torch.no_grad():
        expected = model.embed(x, pooled=True).numpy()
    np.testing.assert_allclose(pooled, expected, atol=1e-5)
    np.testing.assert_allclose(tokens[:, 0], pooled, atol=1e-5)


def test_pil_images_and_arrays_and_a_classifier_gives_pre_logits(tmp_path):
    torch.manual_seed(0)
    classifier = DaViTClassifier({"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1],
                                  "num_heads": [1, 1, 1, 1]}, num_classes=5).eval()
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    out = embed_images(classifier, [Image.fromarray(array), array])
    assert out.shape == (2, 32)
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)  # the same image twice
    x = Preprocessing().transform()(array)[None]
    with torch.no_grad():
        expected = classifier.extract_feat(x, stage="pre_logits")
    np.testing.assert_allclose(out[1], expected[0].numpy(), atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="projector"):
        embed_images(classifier, [array], pooled=False)
    with pytest.raises(InvalidArgumentError, match="projector"):
        embed_images(small_encoder(projection_dim=0), [array], pooled=False)


def test_bf16_autocast_is_close_and_a_bad_file_raises(tmp_path):
    model = small_encoder()
    paths = write_images(tmp_path, 2)
    fp32 = embed_images(model, paths)
    bf16 = embed_images(model, paths, dtype="bf16")
    assert np.abs(bf16 - fp32).max() < 0.1 * np.abs(fp32).max()
    with pytest.raises(ImageLoadError):
        embed_images(model, [*paths, write_bad(tmp_path / "bad.png")])
    with pytest.raises(InvalidArgumentError, match="fp16"):
        embed_images(model, paths, dtype="fp16", device="cpu")


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".safetensors"])
def test_output_files_keep_the_paths_in_order(tmp_path, suffix):
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    paths = ["b.jpg", "a dir/a.jpg", "c.png"]
    out = save_embeddings(tmp_path / f"emb{suffix}", array, paths)
    got, got_paths = load_embeddings(out)
    np.testing.assert_array_equal(got, array)
    assert got_paths == paths
    if suffix == ".npy":
        assert (tmp_path / "emb.paths.txt").read_text() == "b.jpg\na dir/a.jpg\nc.png\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(InvalidArgumentError, match=".npy"):
        save_embeddings(tmp_path / "emb.txt", array, paths)
