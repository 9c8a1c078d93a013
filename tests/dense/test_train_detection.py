"""tools/prepare_digit_scenes.py, the COCO dataset's checks and a short Mask R-CNN training run."""
import dataclasses
import importlib.util
import json
import logging

import pytest
import torch

from davit.dense.coco import CocoDetection
from davit.dense.train import DetectionOptions, train_detection
from davit.errors import DatasetError, InvalidArgumentError
from tests.paths import REPO

pytest.importorskip("pycocotools")
pytest.importorskip("sklearn")

MINI = {"embed_dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}
EPOCHS = 4
SMALL = {"rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 200,
         "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 32, "box_detections_per_img": 10}


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    assert _tool("prepare_digit_scenes").main(["--out", str(root), "--train", "8", "--val", "4", "--size", "96"]) == 0
    return root


def test_scenes_are_coco_with_masks_and_semantic_maps(scenes):
    data = CocoDetection(scenes / "val" / "images", scenes / "val" / "annotations.json")
    image, target = data[0]
    assert image.shape == (3, 96, 96) and len(data) == 4 and data.num_classes == 11
    assert len(target["boxes"]) >= 2 and target["masks"].shape[1:] == (96, 96)
    assert (target["masks"].sum((1, 2)) > 0).all() and ((target["labels"] >= 1) & (target["labels"] <= 10)).all()
    assert len(list((scenes / "val" / "semantic").glob("*.png"))) == 4
    ids = [ann["id"] for ann in json.loads((scenes / "train" / "annotations.json").read_text())["annotations"]]
    assert sorted(ids) == list(range(1, len(ids) + 1))  # pycocotools indexes the ground truth by id


def test_bad_entries_are_skipped_counted_and_logged(scenes, tmp_path, caplog):
    data = json.loads((scenes / "train" / "annotations.json").read_text())
    data["images"].append({"id": 99, "file_name": "missing.png", "width": 96, "height": 96})
    first = data["annotations"][0]
    data["annotations"] += [{**first, "id": 1001, "bbox": [10, 10, 0, 5]},
                            {**first, "id": 1002, "bbox": [10, 10, -3, 5]},
                            {**first, "id": 1003, "bbox": [90, 10, 20, 5]}]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        dataset = CocoDetection(scenes / "train" / "images", path)
    assert dataset.skipped == {"missing image": 1, "box zero or negative size": 2, "box outside the image": 1}
    assert len(dataset) == 8
    assert "skipped 1 image(s) whose file is missing" in caplog.text
    assert "skipped 2 annotation(s) with a box zero or negative size (first id: 1001)" in caplog.text
    data["annotations"].append({**first, "id": 2})
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="1 annotation id.s. used more than once .first: 2.; .* renumber"):
        CocoDetection(scenes / "train" / "images", path)
    path.write_text("{}")
    with pytest.raises(DatasetError, match="not a COCO instances file"):
        CocoDetection(scenes / "train" / "images", path)


def test_training_lowers_the_loss_and_finds_digits(scenes, tmp_path):
    """A CI-sized run: the loss falls and the detector finds digits in the scenes it trained on."""
    torch.set_num_threads(1)
    train = (scenes / "train" / "images", scenes / "train" / "annotations.json")
    options = DetectionOptions(*train, *train, tmp_path, arch=MINI, epochs=EPOCHS, batch_size=4, lr=2e-3, warmup=2,
                               mask_head=(16,), fpn_channels=32, anchor_sizes=(16, 24, 32, 64, 128), image_size=96,
                               detector_options=SMALL, progress=False)
    result = train_detection(options)
    assert result["losses"][-1] < 0.7 * result["losses"][0]
    assert result["bbox_mAP50"] > 0.0 and result["segm_mAP50"] > 0.0
    assert result["skipped"] == {"train": {}, "val": {}}
    assert (tmp_path / "final.pth").is_file() and (tmp_path / "predictions.png").is_file()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == EPOCHS


def test_the_tool_passes_the_small_object_options():
    options = _tool("train_detection").parse_options(
        ["i", "i.json", "v", "v.json", "--work-dir", "w", "--arch", json.dumps(MINI), "--fpn-channels", "64",
         "--anchor-sizes", "16", "24", "32", "64", "128", "--mask-head", "64", "64", "--backbone-weights", "cls.pth"])
    assert options.arch == MINI and options.fpn_channels == 64 and options.mask_head == (64, 64)
    assert options.anchor_sizes == (16, 24, 32, 64, 128) and options.backbone_weights == "cls.pth"
    with pytest.raises(InvalidArgumentError, match="one size per FPN level"):
        dataclasses.replace(options, anchor_sizes=(16, 32))
