"""Every endpoint of a real server, over HTTP: answers equal the library's own functions."""
from __future__ import annotations

import base64
import dataclasses
import re
import threading

import numpy as np
import pytest
import torch

from davit import get_model, inference_model
from davit.checkpoint.card import Preprocessing
from davit.engine.embed import embed_images
from davit.serve.app import create_app
from davit.serve.model import ServedModel
from tests.helpers import MINI_FLORENCE2

from .conftest import CLASSES, running


@pytest.fixture(scope="module")
def reference(tiny_folder):
    return get_model(str(tiny_folder))


def test_health_and_request_ids(server):
    answer = server.http.get("/health")
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}
    assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"])
    assert server.http.get("/health", headers={"X-Request-ID": "job-42.a"}).headers["x-request-id"] == "job-42.a"
    # an unusable id (spaces, too long) is replaced, not echoed
    assert server.http.get("/health", headers={"X-Request-ID": "a b"}).headers["x-request-id"] != "a b"


def test_models_describes_the_card(server, tiny_folder):
    (model,) = server.http.get("/v1/models").json()["data"]
    # the public name (the folder's base name), never the server's path
    assert model["id"] == tiny_folder.name == "tiny"
    assert str(tiny_folder.parent) not in server.http.get("/v1/models").text
    assert str(tiny_folder.parent) not in server.http.get("/openapi.json").text
    assert model["class_names"] == list(CLASSES) and model["num_classes"] == 3
    assert model["preprocessing"]["crop_size"] == 32 and model["input_size"] == [32, 32]
    assert model["tasks"] == ["predict", "embed"] and model["backend"] == "torch"
    assert model["limits"]["max_images"] == 4 and model["max_batch_size"] == 4


def test_predict_multipart_equals_inference_model(server, reference, photos, tmp_path):
    files = [("images", (name, data)) for name, data in photos.items()]
    answer = server.http.post("/v1/predict", files=files, params={"top_k": 2, "scores": "true"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "tiny"  # the public name, not the checkpoint's path
    results = answer.json()["results"]
    for name, data in photos.items():
        (tmp_path / name).write_bytes(data)
    expected = inference_model(reference, [str(tmp_path / name) for name in photos])
    for index, (result, want) in enumerate(zip(results, expected)):
        assert result["index"] == index
        assert result["pred_label"] == want["pred_label"] and result["pred_class"] == want["pred_class"]
        np.testing.assert_allclose(result["pred_scores"], want["pred_scores"], atol=1e-5)
        assert result["pred_score"] == pytest.approx(float(want["pred_score"]), abs=1e-5)
        top = np.argsort(-want["pred_scores"])[:2]
        assert [entry["label"] for entry in result["topk"]] == top.tolist()
        assert [entry["class"] for entry in result["topk"]] == [CLASSES[i] for i in top]


def test_predict_json_base64_equals_multipart(server, photos):
    data = photos["a.jpg"]
    multipart = server.http.post("/v1/predict", files=[("images", ("a.jpg", data))]).json()["results"][0]
    encoded = base64.b64encode(data).decode()
    as_json = server.http.post("/v1/predict", json={"images": [encoded, f"data:image/jpeg;base64,{encoded}"]})
    assert as_json.status_code == 200
    for result in as_json.json()["results"]:
        assert result["pred_label"] == multipart["pred_label"]
        assert result["pred_score"] == pytest.approx(multipart["pred_score"], abs=1e-6)
        assert "pred_scores" not in result and len(result["topk"]) == 3  # default top_k 5, capped at 3 classes


def test_one_bad_image_keeps_the_others_results(server, photos):
    files = [("images", ("a.jpg", photos["a.jpg"])), ("images", ("notes.txt", b"not an image")),
             ("images", ("b.png", photos["b.png"]))]
    answer = server.http.post("/v1/predict", files=files)
    assert answer.status_code == 200
    good, bad, other = answer.json()["results"]
    assert good["index"] == 0 and "pred_label" in good and other["index"] == 2 and "pred_label" in other
    assert bad == {"index": 1, "error": {"code": "not_an_image", "message": bad["error"]["message"]}}


def test_embed_equals_embed_images(server, reference, photos, tmp_path):
    (tmp_path / "a.jpg").write_bytes(photos["a.jpg"])
    answer = server.http.post("/v1/embed", files=[("images", ("a.jpg", photos["a.jpg"]))])
    tokens = server.http.post("/v1/embed", params={"tokens": "true"}, files=[("images", ("a.jpg", photos["a.jpg"]))])
    assert answer.status_code == 200 and answer.json()["kind"] == "pooled"
    (result,) = answer.json()["results"]
    np.testing.assert_allclose(result["embedding"], embed_images(reference, [str(tmp_path / "a.jpg")])[0], atol=1e-5)
    assert tokens.status_code == 400 and tokens.json()["error"]["code"] == "tokens_unavailable"


def test_concurrent_requests_are_batched_and_metrics_count_them(server, photos):
    files = [("images", ("a.jpg", photos["a.jpg"]))]
    answers = []

    def send() -> None:
        answers.append(server.http.post("/v1/predict", files=files).status_code)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 8
    text = server.http.get("/metrics").text
    assert re.search(r'^davit_requests_total\{endpoint="/v1/predict",status="200"\} \d+$', text, re.M)
    assert re.search(r'^davit_request_duration_seconds_count\{endpoint="/v1/predict"\} \d+$', text, re.M)
    batches = int(re.search(r"^davit_batch_size_count (\d+)$", text, re.M)[1])
    images = float(re.search(r"^davit_batch_size_sum (\S+)$", text, re.M)[1])
    assert images > batches  # some model run took more than one image
    assert "# TYPE davit_batch_size histogram" in text and 'davit_batch_size_bucket{le="4.0"}' in text


def test_florence2_tower_serves_token_embeddings_and_does_not_classify(photos, tmp_path):
    arch = MINI_FLORENCE2
    torch.manual_seed(0)
    tower = get_model(arch)
    tower.card = dataclasses.replace(tower.card, preprocessing=Preprocessing(32, 32, exact_size=(32, 32)))
    served = ServedModel("small-florence2", tower, None, "torch", "fp32", tower.card.preprocessing.transform(),
                         (32, 32))
    (tmp_path / "a.jpg").write_bytes(photos["a.jpg"])
    files = [("images", ("a.jpg", photos["a.jpg"]))]
    with running(create_app(served)) as server:
        tokens = server.http.post("/v1/embed", params={"tokens": "true"}, files=files)
        pooled = server.http.post("/v1/embed", files=files)
        refused = server.http.post("/v1/predict", files=files)
        (model,) = server.http.get("/v1/models").json()["data"]
    assert tokens.status_code == 200 and tokens.json()["kind"] == "tokens"
    want = embed_images(tower, [str(tmp_path / "a.jpg")], pooled=False)[0]
    np.testing.assert_allclose(tokens.json()["results"][0]["embedding"], want, atol=1e-5)
    assert np.asarray(pooled.json()["results"][0]["embedding"]).shape == want.shape[1:]
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "cannot_classify"
    assert model["tasks"] == ["embed"] and model["token_embeddings"] is True


def test_public_name_hides_server_paths():
    from davit.serve.model import public_name
    assert public_name("/srv/models/run7/best.pt") == "best.pt"
    assert public_name("/srv/models/tiny/") == "tiny"
    assert public_name("davit_tiny") == "davit_tiny"
    assert public_name('{"embed_dims": [8]}') == '{"embed_dims": [8]}'
