"""``davit embed``: files, folders and patterns to .npy/.npz/.safetensors with the paths in order."""
import json

import numpy as np

from davit.cli.app import run_subcommand
from davit.engine import embed as embed_module
from davit.engine.embed import load_embeddings
from tests.engine.test_embed import small_encoder
from tests.engine.test_infer import TINY_MODEL, write_bad, write_images, write_tiny_checkpoint


def test_pooled_embeddings_of_a_classifier_checkpoint_with_a_paths_sidecar(tmp_path, capsys):
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pth")
    paths = write_images(tmp_path / "imgs", 3)
    out = tmp_path / "emb.npy"
    assert run_subcommand("embed", [str(tmp_path / "imgs"), "--model", TINY_MODEL, "--checkpoint",
                                    str(checkpoint), "--out",
                                    str(out), "--num-workers", "0", "--device", "cpu"]) == 0
    array, listed = load_embeddings(out)
    assert array.shape == (3, 32) and listed == [str(p) for p in paths]
    assert (tmp_path / "emb.paths.txt").is_file()
    assert "3 embedding(s) of shape (32,)" in capsys.readouterr().err
    assert run_subcommand("embed", [str(paths[0]), "--model", TINY_MODEL, "--checkpoint",
                                    str(checkpoint), "--out", str(tmp_path / "t.npz"),
                                    "--tokens"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("davit embed: error:") and "projector" in err and len(err.splitlines()) == 1


def test_tokens_to_safetensors_and_an_unreadable_image_is_reported(tmp_path, capsys, monkeypatch):
    model = small_encoder()
    monkeypatch.setattr(embed_module, "get_model", lambda *args, **kwargs: model)
    paths = write_images(tmp_path / "imgs", 2)
    bad = write_bad(tmp_path / "imgs" / "zz-bad.png")
    out = tmp_path / "emb.safetensors"
    assert run_subcommand("embed", [str(tmp_path / "imgs" / "*.png"), "--out", str(out), "--tokens",
                                    "--batch-size", "2", "--num-workers", "0"]) == 1
    array, listed = load_embeddings(out)
    assert array.shape == (2, 5, 48) and listed == [str(p) for p in paths]
    err = capsys.readouterr().err
    assert f"davit embed: warning: {bad}" in err
    from safetensors import safe_open

    with safe_open(str(out), framework="np") as f:
        assert f.metadata()["kind"] == "tokens" and json.loads(f.metadata()["paths"]) == listed
    np.testing.assert_allclose(array[:, 0], embed_module.embed_images(model, paths), atol=1e-5)


def test_bad_output_name_fails_before_the_model_loads(tmp_path, capsys):
    paths = write_images(tmp_path, 1)
    assert run_subcommand("embed", [str(paths[0]), "--out", str(tmp_path / "emb.csv")]) == 1
    assert ".safetensors" in capsys.readouterr().err


def test_random_weights_are_offline_and_the_same_twice(tmp_path, capsys):
    paths = write_images(tmp_path / "imgs", 1)
    arrays = []
    for name in ("a.npy", "b.npy"):
        assert run_subcommand("embed", [str(paths[0]), "--model", TINY_MODEL, "--random-weights",
                                        "--out", str(tmp_path / name), "--num-workers", "0",
                                        "--device", "cpu"]) == 0
        arrays.append(load_embeddings(tmp_path / name)[0])
    np.testing.assert_array_equal(arrays[0], arrays[1])
    assert run_subcommand("embed", [str(paths[0]), "--model", TINY_MODEL, "--random-weights",
                                    "--seed", "1", "--out", str(tmp_path / "c.npy"),
                                    "--num-workers", "0", "--device", "cpu"]) == 0
    assert not np.array_equal(arrays[0], load_embeddings(tmp_path / "c.npy")[0])
