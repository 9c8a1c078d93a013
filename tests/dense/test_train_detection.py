"""tools/prepare_digit_scenes.py, the COCO dataset's checks and a short Mask R-CNN training run."""
import importlib.util
import json
import logging

import pytest
import torch

from davit.dense.coco import CocoDetection
from davit.dense.train import DetectionOptions, train_detection
from davit.errors import DatasetError
from tests.paths import REPO

pytest.importorskip("pycocotools")
pytest.importorskip("sklearn")

MINI = {"embed_dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}
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
    path.write_text("{}")
    with pytest.raises(DatasetError, match="not a COCO instances file"):
        CocoDetection(scenes / "train" / "images", path)


def test_training_lowers_the_loss_and_evaluates(scenes, tmp_path):
    torch.set_num_threads(2)
    options = DetectionOptions(scenes / "train" / "images", scenes / "train" / "annotations.json",
                               scenes / "val" / "images", scenes / "val" / "annotations.json", tmp_path,
                               arch=MINI, epochs=2, batch_size=4, lr=1e-3, warmup=1, mask_head=(16,), image_size=96,
                               detector_options=SMALL, progress=False)
    result = train_detection(options)
    assert result["losses"][1] < result["losses"][0]
    # two steps of a random detector: mAP is computed (usually 0), not yet meaningful
    for key in ("bbox_mAP", "bbox_mAP50", "segm_mAP", "segm_mAP50"):
        assert 0.0 <= result[key] <= 1.0
    assert result["skipped"] == {"train": {}, "val": {}}
    assert (tmp_path / "final.pth").is_file() and (tmp_path / "predictions.png").is_file()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
