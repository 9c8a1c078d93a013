"""davit cam, davit attention, and --show-dir of davit predict and tools/test.py."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from davit.checkpoint.formats import from_davit
from davit.checkpoint.io import save_state_dict_file
from davit.cli.app import run_subcommand
from davit.model import DaViTClassifier
from tests.helpers import MINI_ARCH_JSON
from tests.paths import REPO
from tests.vis.conftest import TINY_ARCH, tiny_model

CAT = str(REPO / "demo" / "cat.jpg")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """The tiny model with its card (64-pixel crops, five named classes)."""
    model = tiny_model()
    path = tmp_path_factory.mktemp("vis") / "tiny.safetensors"
    return str(save_state_dict_file(model.state_dict(), path, model.card.to_metadata()))


def bad_image(folder) -> str:
    path = folder / "bad.png"
    path.write_bytes(b"\x89PNG not really")
    return str(path)


def one_error_line(capsys, prog: str) -> str:
    """The one error line on stderr (beside the progress bar)."""
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"davit {prog}: error: "), errors
    return errors[0]


def opened(path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


def test_cam_draws_each_readable_image_and_reports_the_bad_one(checkpoint, tmp_path, capsys):
    code = run_subcommand("cam", [CAT, bad_image(tmp_path), "--checkpoint", checkpoint, "--out-dir",
                                  str(tmp_path / "out"), "--target-class", "dog", "--stage", "1",
                                  "--display-size", "200"])
    assert code == 1
    assert "bad.png is not an image file" in one_error_line(capsys, "cam")
    saved = sorted((tmp_path / "out").iterdir())
    assert [path.name for path in saved] == ["cat_gradcam_class3.png"]
    pixels = opened(saved[0])
    assert pixels.shape[1] >= 200 and pixels.shape[0] == 133 + 22 + 8 and pixels.std() > 20


@pytest.mark.parametrize("options, message", [
    (["--target-class", "7"], "target class 7 is outside the model's 5 classes"),
    (["--target-class", "wolf"], "the model has no class named 'wolf' (its 5 classes are 'ant', 'bee', 'cat', "
                                 "'dog', 'eel'); a class index 0..4 is accepted too"),
    (["--target-class", "dgo"], "did you mean 'dog'? its 5 classes are 'ant', 'bee'"),
    (["--target-class", "Cat"], "did you mean 'cat'"),
    (["--stage", "4"], "stage 4 does not exist"),
    (["--random-weights"], "--random-weights and --checkpoint exclude each other"),
])
def test_cam_refuses_what_the_model_does_not_have(checkpoint, tmp_path, capsys, options, message):
    assert run_subcommand("cam", [CAT, "--checkpoint", checkpoint, "--out-dir", str(tmp_path), *options]) == 1
    assert message in one_error_line(capsys, "cam")


def test_attention_with_random_weights_offline(tmp_path, capsys):
    arch = MINI_ARCH_JSON
    assert run_subcommand("attention", [CAT, "--model", arch, "--random-weights", "--out-dir", str(tmp_path),
                                        "--stage", "-1", "--pixel", "100", "150", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.split()
    assert [p.split("/")[-1] for p in printed] == ["cat_stage3_block0_window.png", "cat_stage3_block0_channel.png",
                                                  "cat_stage3_block0.npz"]
    assert opened(printed[0]).std() > 20 and opened(printed[1]).std() > 20
    arrays = np.load(printed[2])
    assert arrays["window_probabilities"].shape == (8, 49, 49)  # 7x7 tokens at stride 32: one window
    assert np.allclose(arrays["window_probabilities"].sum(-1), 1, atol=1e-5)


@pytest.mark.parametrize("options, message", [
    (["--stage", "1", "--block", "2"], "block 2 does not exist: stage 1 has 2 block(s)"),
    (["--pixel", "-1", "10"], "pixel (-1, 10) is outside the 451x300 image"),
])
def test_attention_refuses_blocks_and_pixels_that_do_not_exist(checkpoint, tmp_path, capsys, options, message):
    assert run_subcommand("attention", [CAT, "--checkpoint", checkpoint, "--out-dir", str(tmp_path), *options]) == 1
    assert message in one_error_line(capsys, "attention")


def test_attention_of_an_unreadable_image(checkpoint, tmp_path, capsys):
    assert run_subcommand("attention", [bad_image(tmp_path), "--checkpoint", checkpoint, "--out-dir",
                                        str(tmp_path)]) == 1
    assert "bad.png is not an image file" in one_error_line(capsys, "attention")


def test_predict_show_dir_draws_the_classified_images(checkpoint, tmp_path, capsys):
    show = tmp_path / "show"
    code = run_subcommand("predict", [CAT, bad_image(tmp_path), "--checkpoint", checkpoint, "--topk", "2",
                                      "--num-workers", "0", "--device", "cpu", "--show-dir", str(show), "--json"])
    assert code == 1
    records = json.loads(capsys.readouterr().out)
    assert "error" in records[1]
    assert [path.name for path in show.iterdir()] == ["cat.png"]
    pixels = opened(show / "cat.png")
    assert pixels.shape[:2] == (341 + 2 * 22 + 8, 512) and pixels[:341].std() > 30
    assert (pixels[341:].sum(-1) < 200).any()  # the caption's text


def test_tools_test_show_dir_draws_predictions_and_ground_truth(tmp_path, capsys):
    torch.manual_seed(0)
    arch = {key: value for key, value in TINY_ARCH.items() if key != "window_size"}
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": from_davit(DaViTClassifier(arch, num_classes=2).state_dict(), "mmpretrain")}, path)
    for folder in ("cats", "cups"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    Image.open(CAT).save(tmp_path / "data" / "cats" / "c.jpg")
    Image.open(REPO / "demo" / "coffee.jpg").save(tmp_path / "data" / "cups" / "k.jpg")
    options = [f"model.backbone.arch={arch}", "model.head.num_classes=2", "model.head.in_channels=64",
               f"test_dataloader.dataset.data_root={tmp_path / 'data'}", "test_dataloader.dataset.type=CustomDataset",
               "test_dataloader.dataset.split=", "test_dataloader.dataset.ann_file=",
               "test_dataloader.dataset.data_prefix=", "test_evaluator.topk=(1,)"]
    show = tmp_path / "show"
    assert run_subcommand("test", [str(REPO / "configs/davit/davit-tiny_4xb256_in1k.py"), str(path), "--device",
                                   "cpu", "--num-workers", "0", "--work-dir", str(tmp_path / "w"), "--show-dir",
                                   str(show), "--cfg-options", *options], prog="tools/test.py") == 0
    assert sorted(p.name for p in show.iterdir()) == ["c.png", "confusion_matrix.png", "k.png"]
    for name in ("c.png", "k.png"):
        pixels = opened(show / name)
        truth_line = pixels[-22 - 8:]
        coloured = truth_line[(truth_line.max(-1).astype(int) - truth_line.min(-1)) > 100]
        assert len(coloured) > 20  # the ground truth, in green or red
