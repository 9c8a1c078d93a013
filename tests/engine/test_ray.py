"""Ray Data: the map_batches callable and ``--engine ray`` give the records and embeddings of the
torch path, on a local Ray instance this test starts (this machine only)."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from davit.cli.app import run_subcommand
from davit.engine.embed import load_embeddings
from davit.engine.ray import DaViTBatchPredictor
from tests.engine.test_embed_shards import write_shards
from tests.helpers import MINI_ARCH_JSON

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_the_callable_classifies_paths_bytes_and_arrays_and_reports_a_bad_row(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    buffer = io.BytesIO()
    Image.open(tmp_path / "a.png").save(buffer, "PNG")
    predictor = DaViTBatchPredictor(MINI_ARCH_JSON, pretrained=False, topk=3, seed=0)
    batch = {"image": np.array([str(tmp_path / "a.png"), buffer.getvalue(), b"not an image"], dtype=object)}
    records = [json.loads(r) for r in predictor(batch)["record"]]
    assert records[0]["topk"] == records[1]["topk"] and len(records[0]["topk"]) == 3  # same batch, same bytes
    assert "error" in records[2] and records[2]["image"] == "row 2"
    array_batch = {"image": [np.asarray(Image.open(tmp_path / "a.png"))]}
    alone = json.loads(predictor(array_batch)["record"][0])  # a batch of one: the same up to rounding
    assert alone["pred_label"] == records[0]["pred_label"]
    assert [t["score"] for t in alone["topk"]] == pytest.approx([t["score"] for t in records[0]["topk"]], abs=1e-5)


@pytest.mark.slow
def test_engine_ray_equals_the_torch_path(local_ray, tmp_path):
    write_shards(tmp_path / "wds", 2, 5)
    source = f"wds:{tmp_path}/wds/photos-{{000..001}}.tar"
    model = ["--model", MINI_ARCH_JSON, "--random-weights", "--seed", "2", "--batch-size", "3"]
    assert run_subcommand("predict", [source, *model, "--out", str(tmp_path / "torch.jsonl")]) == 0
    assert run_subcommand("predict", [source, *model, "--out", str(tmp_path / "ray.jsonl"), "--engine", "ray",
                                      "--concurrency", "2"]) == 0
    torch_records = [json.loads(line) for line in (tmp_path / "torch.jsonl").read_text().splitlines()]
    ray_records = [json.loads(line) for line in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert [r["image"] for r in ray_records] == [r["image"] for r in torch_records]
    for a, b in zip(torch_records, ray_records):
        assert [t["label"] for t in a["topk"]] == [t["label"] for t in b["topk"]]
        assert a["pred_score"] == pytest.approx(b["pred_score"], abs=1e-6)

    assert run_subcommand("embed", [source, *model, "--out", str(tmp_path / "torch.npy")]) == 0
    assert run_subcommand("embed", [source, *model, "--out", str(tmp_path / "ray.npy"), "--engine", "ray"]) == 0
    (one, one_names), (two, two_names) = load_embeddings(tmp_path / "torch.npy"), load_embeddings(tmp_path / "ray.npy")
    assert one_names == two_names
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6)
