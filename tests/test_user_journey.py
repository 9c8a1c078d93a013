"""A new user's whole path, offline, with the commands of the guides (docs/guides) (each in a process of its own, as
a user runs them) and nothing but real photos:

build a 3-class folder dataset, fine-tune with data-root ``--cfg-options`` (and ``load_from=None``:
no weights can be downloaded here), ``tools/test.py`` on the work dir's config and ``best.pth``,
``davit predict`` the folder, export to ONNX and OpenVINO, run ``tools/test.py`` and ``davit
predict`` on the exported files, ``davit serve`` the exported ONNX file and query it over HTTP on
127.0.0.1, ``davit embed --random-weights`` with a Florence-2 encoder, save that encoder and embed
with the saved folder. Every answer must agree with the PyTorch model's.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import davit
from davit.cli.argtypes import weights_seed
from davit.engine.embed import load_embeddings
from tests.paths import REPO
from tests.test_round_trip import PHOTOS, _crops

pytestmark = pytest.mark.slow  # each step is a davit command in its own process

SIZE = 64
CONFIG = REPO / "configs" / "davit" / "davit-tiny_finetune_custom.py"

pytest.importorskip("onnxruntime")


def run_subcommand(command: str, args: list[str], prog: str | None = None) -> int:
    """Run the command as the user does, in a process of its own (``tools/train.py``,
    ``tools/test.py`` or ``davit COMMAND``); its exit status."""
    program = [str(REPO / prog)] if prog else ["-m", "davit", command]
    done = subprocess.run([sys.executable, *program, *args], capture_output=True, text=True, timeout=900, cwd=REPO)
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
    return done.returncode


def _image(record: dict) -> Path:
    """The image a result record names (the record's path key, whichever this version writes)."""
    return Path(record.get("image") or record["path"]).resolve()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """Fine-tuned as docs/guides/fine-tuning.md says, on the user's own folders given by --cfg-options."""
    root = tmp_path_factory.mktemp("journey")
    rng = np.random.default_rng(1)
    for name, photo in PHOTOS.items():
        _crops(REPO / "demo" / photo, root / "pets" / "train" / name, 8, rng)
        _crops(REPO / "demo" / photo, root / "pets" / "val" / name, 3, rng)
    options = ["load_from=None",
               f"train_dataloader.dataset.data_root={root / 'pets' / 'train'}",
               f"val_dataloader.dataset.data_root={root / 'pets' / 'val'}",
               "train_dataloader.dataset.pipeline.1.scale=64", "train_dataloader.batch_size=12",
               "train_dataloader.num_workers=0", "val_dataloader.num_workers=0",
               f"val_dataloader.dataset.pipeline.1.scale={SIZE + 8}",
               f"val_dataloader.dataset.pipeline.2.crop_size={SIZE}",
               "model.backbone.drop_path_rate=0.0",
               "optim_wrapper.optimizer.lr=1e-3", "param_scheduler.0.end=1", "param_scheduler.1.begin=1",
               "train_cfg.max_epochs=2"]
    out = root / "work"
    assert run_subcommand("train", [str(CONFIG), "--work-dir", str(out), "--device", "cpu", "--seed", "0",
                                    "--cfg-options", *options], prog="tools/train.py") == 0
    return {"root": root, "work": out, "config": out / CONFIG.name, "best": out / "best.pth",
            "val": root / "pets" / "val"}


@pytest.fixture(scope="module")
def tested(work, tmp_path_factory) -> dict[Path, dict]:
    """tools/test.py on the work dir's own config and best.pth: the saved config is the one run."""
    out = tmp_path_factory.mktemp("tested") / "preds.json"
    assert run_subcommand("test", [str(work["config"]), str(work["best"]), "--device", "cpu", "--out", str(out),
                                   "--work-dir", str(out.parent / "test")], prog="tools/test.py") == 0
    records = json.loads(out.read_text())
    assert len(records) == 9  # the user's val folder, not the config's data/custom/val
    return {_image(record): record for record in records}


@pytest.fixture(scope="module")
def exported(work, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exported")
    files = {"onnx": folder / "pets.onnx"}
    assert run_subcommand("export", [str(work["best"]), str(files["onnx"])]) == 0
    try:
        import openvino  # noqa: F401
    except ImportError:
        return files
    files["openvino"] = folder / "pets.xml"
    assert run_subcommand("export", [str(work["best"]), str(files["openvino"]), "--format", "openvino"]) == 0
    return files


def _predict(model_flag: str, model: Path, folder: Path, out: Path) -> dict[Path, dict]:
    assert run_subcommand("predict", [str(folder), model_flag, str(model), "--out", str(out), "--topk", "3",
                                      "--num-workers", "0"]) == 0
    return {_image(record): record for record in map(json.loads, out.read_text().splitlines())}


def test_best_pth_predicts_what_tools_test_measured(work, tested, tmp_path):
    predicted = _predict("--checkpoint", work["best"], work["val"], tmp_path / "torch.jsonl")
    assert predicted.keys() == tested.keys()
    for path, record in predicted.items():
        assert record["pred_class"] in PHOTOS  # the folder names, from the card
        assert record["pred_label"] == tested[path]["pred_label"]
        assert record["pred_score"] == pytest.approx(tested[path]["pred_score"], abs=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_the_exported_files_predict_and_test_as_the_model(work, tested, exported, fmt, tmp_path):
    if fmt not in exported:
        pytest.skip("OpenVINO is not installed")
    predicted = _predict("--model", exported[fmt], work["val"], tmp_path / f"{fmt}.jsonl")
    assert predicted.keys() == tested.keys()
    for path, record in predicted.items():
        assert record["pred_label"] == tested[path]["pred_label"]
        assert record["pred_score"] == pytest.approx(tested[path]["pred_score"], abs=1e-4)
    assert run_subcommand("test", [str(work["config"]), str(exported[fmt]), "--work-dir", str(tmp_path / "t")],
                          prog="tools/test.py") == 0
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    expected = sum(r["pred_label"] == r["gt_label"] for r in tested.values()) / len(tested)
    assert metrics["accuracy/top1"] == pytest.approx(100 * expected)


def test_davit_serve_answers_with_the_exported_onnx_file(work, tested, exported):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "davit", "serve", str(exported["onnx"]), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    images = sorted(tested)
    try:
        import httpx

        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "davit serve did not start"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        files = [("images", (path.name, path.read_bytes())) for path in images[:4]]
        response = httpx.post(f"{url}/v1/predict", files=files, timeout=60)
        (described,) = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    finally:
        server.terminate()
        server.communicate(timeout=30)
    assert response.status_code == 200, response.text
    assert described["backend"] == "onnxruntime" and described["class_names"] == sorted(PHOTOS)
    assert str(exported["onnx"].parent) not in response.text  # no server path in the answers
    for path, result in zip(images, response.json()["results"]):
        assert result["pred_label"] == tested[path]["pred_label"]
        assert result["pred_score"] == pytest.approx(tested[path]["pred_score"], abs=1e-4)


def test_florence2_embeddings_offline_then_saved_and_reloaded(tmp_path):
    photo = str(REPO / "demo" / "cat.jpg")
    assert run_subcommand("embed", [photo, "--random-weights", "--seed", "3", "--out", str(tmp_path / "a.npy"),
                                    "--num-workers", "0", "--device", "cpu"]) == 0
    with weights_seed(3):
        encoder = davit.get_model("davit-florence2-base", pretrained=False)
    folder = davit.save_pretrained(encoder, tmp_path / "encoder")
    reloaded = davit.get_model(str(folder))
    assert type(reloaded) is type(encoder)
    for mine, theirs in zip(reloaded.state_dict().values(), encoder.state_dict().values()):
        assert torch.equal(mine, theirs)
    assert run_subcommand("embed", [photo, "--model", str(folder), "--out", str(tmp_path / "b.npy"),
                                    "--num-workers", "0", "--device", "cpu"]) == 0
    (first, paths), (second, _) = load_embeddings(tmp_path / "a.npy"), load_embeddings(tmp_path / "b.npy")
    assert paths == [photo] and first.shape == (1, encoder.projection_dim)
    np.testing.assert_allclose(first, second, atol=1e-5)
    assert os.path.getsize(tmp_path / "a.npy") > 0
