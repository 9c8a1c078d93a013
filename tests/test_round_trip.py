"""The fine-tuning round trip on real photos, as a user runs it: train on a 3-class folder dataset
with tools/train.py, evaluate the best checkpoint with tools/test.py, predict the validation folder
with davit predict, share the model as a Hugging Face folder that timm loads, and export to ONNX.

The three classes are crops of three real photographs (demo/): a cat, a cup of coffee and a
portrait. The model is DaViT-T at 64x64 pixels, fine-tuned from random weights saved as a
1000-class checkpoint (the published weights cannot be downloaded here).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import davit
from davit.cli.app import run_subcommand
from davit.model import DaViTClassifier
from tests.paths import REPO

pytestmark = pytest.mark.slow  # trains, tests, exports and reloads

PHOTOS = {"cat": "cat.jpg", "coffee": "coffee.jpg", "portrait": "grace_hopper.jpg"}
SIZE = 64
CONFIG = REPO / "configs" / "davit" / "davit-tiny_finetune_custom.py"


def _crops(photo: Path, folder: Path, count: int, rng: np.random.Generator) -> None:
    """``count`` random square crops of ``photo`` (60-100% of its short side), as JPEGs."""
    image = Image.open(photo).convert("RGB")
    folder.mkdir(parents=True)
    for i in range(count):
        side = int(min(image.size) * rng.uniform(0.6, 1.0))
        left = int(rng.integers(0, image.width - side + 1))
        top = int(rng.integers(0, image.height - side + 1))
        crop = image.crop((left, top, left + side, top + side)).resize((80, 80))
        crop.save(folder / f"{i}.jpg", quality=90)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("round_trip")
    rng = np.random.default_rng(0)
    for name, photo in PHOTOS.items():
        _crops(REPO / "demo" / photo, root / "data" / "train" / name, 12, rng)
        _crops(REPO / "demo" / photo, root / "data" / "val" / name, 4, rng)
    torch.manual_seed(0)
    torch.save({"state_dict": DaViTClassifier("tiny").state_dict()}, root / "start.pth")
    sizes = [f"{loader}.dataset.pipeline.{step}" for loader in ("val_dataloader", "test_dataloader")
             for step in (f"1.scale={SIZE + 8}", f"2.crop_size={SIZE}")]
    options = [f"load_from={root / 'start.pth'}",
               f"train_dataloader.dataset.data_root={root / 'data' / 'train'}",
               f"val_dataloader.dataset.data_root={root / 'data' / 'val'}",
               f"test_dataloader.dataset.data_root={root / 'data' / 'val'}",
               "train_dataloader.dataset.pipeline.1.scale=64", "train_dataloader.batch_size=12",
               "train_dataloader.num_workers=0", "val_dataloader.num_workers=0",
               "test_dataloader.num_workers=0", "model.backbone.drop_path_rate=0.0",
               "optim_wrapper.optimizer.lr=5e-4", "param_scheduler.0.end=1",
               "param_scheduler.1.begin=1", "train_cfg.max_epochs=3", *sizes]
    work = root / "work"
    assert run_subcommand("train", [str(CONFIG), "--work-dir", str(work), "--device", "cpu",
                                    "--seed", "0", "--cfg-options", *options],
                          prog="tools/train.py") == 0
    return {"root": root, "work": work, "best": work / "best.pth", "val": root / "data" / "val",
            "config": work / CONFIG.name}


def _val_images(val: Path) -> list[Path]:
    return sorted(val.rglob("*.jpg"))


def test_test_and_predict_agree_and_use_the_folder_names(trained, tmp_path, capsys):
    preds = tmp_path / "preds.json"
    assert run_subcommand("test", [str(trained["config"]), str(trained["best"]), "--device", "cpu",
                                   "--work-dir", str(tmp_path / "test"), "--out", str(preds),
                                   "--out-item", "pred"], prog="tools/test.py") == 0
    err = capsys.readouterr().err
    assert err.count("is more than the model's 3 classes") == 1  # topk (1, 5) with 3 classes
    tested = {Path(r["image"]).resolve(): r for r in json.loads(preds.read_text())}
    assert len(tested) == 12

    results = tmp_path / "results.jsonl"
    assert run_subcommand("predict", [str(trained["val"]), "--checkpoint", str(trained["best"]),
                                      "--device", "cpu", "--out", str(results), "--topk", "3",
                                      "--num-workers", "0"]) == 0
    predicted = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(predicted) == 12
    for record in predicted:
        path = Path(record["image"]).resolve()
        assert record["pred_class"] in PHOTOS  # the class names are the folder names
        assert record["pred_label"] == tested[path]["pred_label"]
        assert record["pred_class"] == tested[path]["pred_class"]
        assert record["pred_score"] == pytest.approx(tested[path]["pred_score"], abs=1e-5)


def test_the_card_carries_classes_and_preprocessing(trained):
    model = davit.get_model(str(trained["best"]), pretrained=True)
    assert model.class_names == sorted(PHOTOS)
    assert model.card.preprocessing.crop_size == SIZE
    assert model.card.preprocessing.resize_edge == SIZE + 8
    result = davit.inference_model(model, str(_val_images(trained["val"])[0]))
    assert result["pred_class"] in PHOTOS


def test_save_pretrained_folder_loads_in_timm_with_the_same_logits(trained, tmp_path):
    timm = pytest.importorskip("timm")
    model = davit.get_model(str(trained["best"]), pretrained=True)
    folder = davit.save_pretrained(model, tmp_path / "shared")
    reference = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = model.card.preprocessing.transform()
    images = torch.stack([transform(str(p)) for p in _val_images(trained["val"])])
    with torch.no_grad():
        assert torch.allclose(model(images), reference(images), atol=1e-4)
    again = davit.get_model(str(folder))
    assert again.class_names == model.class_names
    with torch.no_grad():
        assert torch.equal(again(images), model(images))


def test_onnx_export_gives_the_same_top1(trained, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    assert run_subcommand("export", [str(trained["best"]), str(out), "--input-size",
                                     str(SIZE), str(SIZE)]) == 0
    model = davit.get_model(str(trained["best"]), pretrained=True)
    transform = model.card.preprocessing.transform()
    images = torch.stack([transform(str(p)) for p in _val_images(trained["val"])])
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        expected = model(images).argmax(dim=1)
    assert torch.equal(torch.from_numpy(logits).argmax(dim=1), expected)
