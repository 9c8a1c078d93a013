"""Prediction pictures (show_dir) and heat-map overlays."""
import numpy as np
import pytest
from PIL import Image

from davit.errors import InvalidArgumentError
from davit.vis.drawing import ClassScore, PredictionPictures, fit, heatmap_overlay, prediction_picture
from davit.vis.regions import InputRegion
from tests.paths import REPO

CAT = REPO / "demo" / "cat.jpg"
TOP = [ClassScore(3, 0.81, "tabby"), ClassScore(7, 0.1), ClassScore(1, 0.05, "1")]


def caption_band(picture: Image.Image, image_height: int) -> np.ndarray:
    """The pixels under the first ``image_height`` rows (the caption), as int32 RGB."""
    band = np.asarray(picture.convert("RGB"), dtype=np.int32)[image_height:]
    return band


def test_prediction_picture_scales_the_image_and_writes_one_line_per_class():
    picture = prediction_picture(CAT, TOP, display_size=300)
    assert picture.width == 300 and picture.height == 200 + 3 * 22 + 8
    assert np.asarray(picture.crop((0, 0, 300, 200))).std() > 30  # the photo
    band = caption_band(picture, 200)
    inked_rows = np.flatnonzero((band.sum(-1) < 300).any(axis=1))
    assert inked_rows.size and inked_rows.max() > 2 * 22  # the third line has text


@pytest.mark.parametrize("truth, colour", [(3, 1), (4, 0)])  # green channel leads when right, red when wrong
def test_the_ground_truth_is_green_when_right_and_red_when_wrong(truth, colour):
    picture = prediction_picture(CAT, TOP, ground_truth=(truth, None), display_size=300)
    last_line = caption_band(picture, 200 + 3 * 22)
    coloured = last_line[(last_line.max(-1) - last_line.min(-1)) > 100]
    assert len(coloured) > 20 and (coloured.argmax(-1) == colour).mean() > 0.9


def test_small_images_grow_crisply_and_names_never_collide(tmp_path):
    digit = Image.fromarray(np.kron(np.eye(4, dtype=np.uint8) * 255, np.ones((8, 8), np.uint8)))
    grown = fit(digit.convert("RGB"), 256)
    assert grown.size == (256, 256) and set(np.unique(np.asarray(grown))) == {0, 255}  # nearest: no blur
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        digit.save(tmp_path / folder / "seven.png")
    pictures = PredictionPictures(tmp_path / "show", display_size=64)
    saved = [pictures.save(tmp_path / folder / "seven.png", TOP[:1]) for folder in ("a", "b")]
    assert [path.name for path in saved] == ["seven.png", "seven_1.png"]
    with Image.open(saved[1]) as picture:
        assert picture.width >= 64 and picture.height == 64 + 22 + 8
    with pytest.raises(InvalidArgumentError, match="display size"):
        fit(digit, -1)


def test_the_heat_map_lands_on_its_region():
    image = Image.new("RGB", (100, 50), (128, 128, 128))
    heat = np.zeros((10, 10), np.float32)
    heat[:5, :5] = 1.0  # hot in the region's top-left quarter
    drawn = np.asarray(heatmap_overlay(image, heat, InputRegion(40, 0, 90, 50, (10, 10))), dtype=np.int32)
    assert (drawn[:, :40] == 51).all() and (drawn[:, 90:] == 51).all()  # outside: dimmed to 2/5
    hot, cold = drawn[5, 45], drawn[45, 85]
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet: red where hot, blue where cold
    with pytest.raises(InvalidArgumentError, match="two dimensions"):
        heatmap_overlay(image, heat[None], InputRegion(0, 0, 100, 50, (10, 10)))
