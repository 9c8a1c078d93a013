"""Export once, serve the exported file: ``davit serve model.onnx`` answers over HTTP on 127.0.0.1 what
the PyTorch model answers, and an export of a Florence-2 encoder's image tokens serves (and ``davit
embed`` computes) the encoder's own embeddings."""
import dataclasses

import numpy as np
import pytest
import torch

from davit import get_model
from davit.checkpoint.card import Preprocessing
from davit.cli.app import run_subcommand
from davit.engine.embed import embed_images, load_embeddings
from davit.export import export_model
from davit.serve.app import create_app
from davit.serve.model import load_served_model
from tests.helpers import MINI_FLORENCE2

from .conftest import running

pytestmark = pytest.mark.slow  # exports, then serves the files

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported_classifier(tiny_folder, tmp_path_factory):
    path = tmp_path_factory.mktemp("exported") / "tiny.onnx"
    assert run_subcommand("export", [str(tiny_folder), str(path)]) == 0
    return path


def test_served_export_answers_as_the_pytorch_model(served, exported_classifier, photos):
    exported = load_served_model(str(exported_classifier))
    assert exported.backend == "onnxruntime" and exported.class_names == served.class_names
    files = [("images", (name, data)) for name, data in photos.items()]
    answers = {}
    for name, model in (("torch", served), ("onnx", exported)):
        with running(create_app(model)) as server:
            response = server.http.post("/v1/predict", files=files, params={"scores": "true"})
            assert response.status_code == 200
            answers[name] = response.json()
            (described,) = server.http.get("/v1/models").json()["data"]
            refused = server.http.post("/v1/embed", files=files)
    assert described["tasks"] == ["predict"] and described["id"] == "tiny.onnx"  # no server path
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "cannot_embed"
    for mine, theirs in zip(answers["onnx"]["results"], answers["torch"]["results"]):
        assert mine["pred_label"] == theirs["pred_label"] and mine.get("pred_class") == theirs.get("pred_class")
        np.testing.assert_allclose(mine["pred_scores"], theirs["pred_scores"], atol=1e-5)


@pytest.fixture(scope="module")
def tower_and_tokens(tmp_path_factory):
    """A small random Florence-2 encoder (with projector) and its image tokens exported to ONNX."""
    arch = MINI_FLORENCE2
    torch.manual_seed(0)
    tower = get_model(arch)
    tower.card = dataclasses.replace(tower.card, preprocessing=Preprocessing(64, 64, exact_size=(64, 64)))
    path = export_model(tower, tmp_path_factory.mktemp("tokens") / "tokens.onnx", input_size=(64, 64),
                        encode_image=True)
    return tower, path


def test_exported_tokens_serve_and_embed_as_the_encoder(tower_and_tokens, photos, tmp_path):
    tower, path = tower_and_tokens
    image = tmp_path / "a.jpg"
    image.write_bytes(photos["a.jpg"])
    want = embed_images(tower, [str(image)], pooled=False)[0]
    with running(create_app(load_served_model(str(path)))) as server:
        files = [("images", ("a.jpg", photos["a.jpg"]))]
        tokens = server.http.post("/v1/embed", params={"tokens": "true"}, files=files)
        refused = server.http.post("/v1/predict", files=files)
    assert tokens.status_code == 200
    np.testing.assert_allclose(tokens.json()["results"][0]["embedding"], want, atol=1e-4)
    assert refused.status_code == 409

    out = tmp_path / "emb.npy"
    assert run_subcommand("embed", [str(image), "--model", str(path), "--out", str(out), "--num-workers", "0"]) == 0
    array, paths = load_embeddings(out)
    assert paths == [str(image)]
    np.testing.assert_allclose(array[0], want[0], atol=1e-4)  # the pooled token


def test_embed_refuses_an_exported_classifier(exported_classifier, photos, tmp_path, capsys):
    image = tmp_path / "a.jpg"
    image.write_bytes(photos["a.jpg"])
    status = run_subcommand("embed", [str(image), "--model", str(exported_classifier), "--out",
                                      str(tmp_path / "e.npy")])
    assert status != 0
    assert "--encode-image" in capsys.readouterr().err
