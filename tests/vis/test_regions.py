"""Where the model's input lies in the original image: the box must be the one the test pipeline
cuts, so that heat maps land on the pixels they describe."""
import math

import numpy as np
import pytest
from PIL import Image

from davit.checkpoint.card import Preprocessing
from davit.data.transforms import to_uint8_crop, to_uint8_resized
from davit.errors import InvalidArgumentError
from davit.vis.regions import input_region, stage_token


def coordinate_image(width: int, height: int) -> Image.Image:
    """Red = 2x, green = 3y: each pixel says where it is."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([2 * x, 3 * y, np.zeros_like(x)], axis=-1).astype(np.uint8))


@pytest.mark.parametrize("size", [(90, 60), (60, 90), (50, 50)])
def test_every_input_pixel_comes_from_the_region_pixel_it_maps_to(size):
    image = coordinate_image(*size)
    preprocessing = Preprocessing(resize_edge=36, crop_size=32, interpolation="nearest")
    crop = to_uint8_crop(image, 36, 32, "nearest").numpy()
    region = input_region(image.size, preprocessing)
    assert region.input_size == crop.shape[1:]
    for row, column in [(0, 0), (5, 31), (31, 17), (20, 9)]:
        x, y = region.to_image(column + 0.5, row + 0.5)  # nearest samples each output pixel's centre
        assert crop[0, row, column] == 2 * math.floor(x) and crop[1, row, column] == 3 * math.floor(y)
        assert region.to_input(x, y) == pytest.approx((column + 0.5, row + 0.5))


def test_exact_size_preprocessing_maps_the_whole_image():
    image = coordinate_image(90, 60)
    region = input_region(image.size, Preprocessing(exact_size=(20, 40), interpolation="nearest"))
    assert region.box == (0, 0, 90, 60) and region.input_size == (20, 40)
    resized = to_uint8_resized(image, (20, 40), "nearest").numpy()
    x, y = region.to_image(13.5, 7.5)
    assert resized[0, 7, 13] == 2 * math.floor(x) and resized[1, 7, 13] == 3 * math.floor(y)


def test_pixels_outside_the_image_or_the_crop_are_refused():
    region = input_region((90, 60), Preprocessing(resize_edge=36, crop_size=32))
    region.check_pixel(45, 30, (90, 60))
    with pytest.raises(InvalidArgumentError, match=r"outside the 90x60 image; pass --pixel"):
        region.check_pixel(90, 10, (90, 60))
    with pytest.raises(InvalidArgumentError, match="outside the centre crop the model sees"):
        region.check_pixel(2, 30, (90, 60))


def test_stage_tokens_follow_the_strides():
    region = input_region((64, 64), Preprocessing(resize_edge=64, crop_size=64))
    assert stage_token(region, 0, 0, (16, 16), 4) == (0, 0)
    assert stage_token(region, 63.9, 8.2, (16, 16), 4) == (2, 15)
    assert stage_token(region, 20, 40, (2, 2), 32) == (1, 0)
