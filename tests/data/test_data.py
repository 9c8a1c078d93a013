import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFile

from davit.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageLoadError,
    TestTransform,
    build_test_transform,
    center_crop,
    imagenet_classes,
    imagenet_synsets,
    load_image,
    preprocess,
    resize_short_edge,
    short_edge_size,
    to_uint8_crop,
)
from tests.paths import FIXTURES, REPO

CAT = REPO / "demo" / "cat.jpg"
COFFEE = REPO / "demo" / "coffee.jpg"
PIPELINE_FIXTURE = FIXTURES / "mmpretrain_pipeline.pt"
MMPRETRAIN_CROPS: dict[str, torch.Tensor] = torch.load(PIPELINE_FIXTURE, weights_only=True)


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


# ---------------------------------------------------------------- class names


def test_imagenet_classes():
    classes, synsets = imagenet_classes(), imagenet_synsets()
    assert len(classes) == len(synsets) == 1000
    assert classes[0] == "tench, Tinca tinca"
    assert synsets[0] == "n01440764"
    assert len(set(synsets)) == 1000
    classes.clear()  # callers get copies, the cache stays intact
    assert len(imagenet_classes()) == 1000


# ------------------------------------------------------------- loading: good


def test_load_jpeg_path_str_and_pathlike():
    image = load_image(CAT)
    assert image.mode == "RGB" and image.size == (451, 300)
    assert np.array_equal(pixels(load_image(str(CAT))), pixels(image))


def test_loaded_image_is_detached_from_the_file(tmp_path):
    path = save(Image.open(CAT).resize((64, 48)), tmp_path / "cat.png")
    fds = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").exists() else None
    image = load_image(path)
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) == fds
    path.unlink()
    assert getattr(image, "fp", None) is None
    assert image.size == (64, 48) and len(image.tobytes()) == 64 * 48 * 3


def test_load_one_pixel(tmp_path):
    path = save(Image.new("RGB", (1, 1), (1, 2, 3)), tmp_path / "one.png")
    assert pixels(load_image(path)).tolist() == [[[1, 2, 3]]]


def test_grey_and_grey_alpha(tmp_path):
    grey = load_image(save(Image.new("L", (2, 1), 77), tmp_path / "l.png"))
    assert pixels(grey).tolist() == [[[77, 77, 77]] * 2]
    grey_alpha = load_image(save(Image.new("LA", (1, 1), (90, 0)), tmp_path / "la.png"))
    assert pixels(grey_alpha).tolist() == [[[90, 90, 90]]]


def test_rgba_drops_alpha(tmp_path):
    path = save(Image.new("RGBA", (1, 1), (10, 20, 30, 0)), tmp_path / "rgba.png")
    assert pixels(load_image(path)).tolist() == [[[10, 20, 30]]]


@pytest.mark.parametrize("transparency", [0, b"\x00\x80"])
def test_palette_with_transparency(tmp_path, transparency):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.putpixel((1, 0), 1)
    path = save(image, tmp_path / "p.png", transparency=transparency)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_image(path)
    assert pixels(loaded).tolist() == [[[255, 0, 0], [0, 0, 255]]]


def test_palette_without_transparency(tmp_path):
    image = Image.new("P", (1, 1))
    image.putpalette([1, 2, 3])
    assert pixels(load_image(save(image, tmp_path / "p.gif"))).tolist() == [[[1, 2, 3]]]


def test_bilevel(tmp_path):
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)
    loaded = load_image(save(image, tmp_path / "bw.png"))
    assert pixels(loaded).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_cmyk_jpeg(tmp_path):
    image = Image.new("CMYK", (16, 8), (0, 0, 0, 0))
    image.paste((255, 0, 0, 0), (8, 0, 16, 8))  # cyan on the right
    path = save(image, tmp_path / "cmyk.jpg", quality=100)
    with Image.open(path) as written:
        assert written.mode == "CMYK"
    loaded = pixels(load_image(path)).astype(int)
    assert np.abs(loaded[:, 2:5] - [255, 255, 255]).max() <= 3
    assert np.abs(loaded[:, 11:14] - [0, 255, 255]).max() <= 3


def test_cmyk_pil_image():
    assert pixels(load_image(Image.new("CMYK", (1, 1), (0, 255, 0, 0)))).tolist() == [[[255, 0, 255]]]


SIXTEEN_BIT = np.array([[0x1234, 0xFFFF, 0x00FF, 0x0100]], dtype=np.uint16)
SIXTEEN_BIT_HIGH_BYTE = [[[v >> 8] * 3 for v in SIXTEEN_BIT[0].tolist()]]


def test_sixteen_bit_png_keeps_the_high_byte(tmp_path):
    path = save(Image.fromarray(SIXTEEN_BIT), tmp_path / "g16.png")
    with Image.open(path) as written:
        assert written.mode == "I;16"
    assert pixels(load_image(path)).tolist() == SIXTEEN_BIT_HIGH_BYTE


def test_sixteen_bit_big_endian():
    image = Image.frombytes("I;16B", (4, 1), SIXTEEN_BIT.astype(">u2").tobytes())
    assert pixels(load_image(image)).tolist() == SIXTEEN_BIT_HIGH_BYTE


def test_thirty_two_bit_integer():
    values = np.array([[0x1234, 0xFFFF, 70000, -5]], dtype=np.int32)
    image = Image.fromarray(values)
    assert image.mode == "I"
    assert pixels(load_image(image))[0, :, 0].tolist() == [0x12, 0xFF, 0xFF, 0]


def test_float_grey():
    image = Image.fromarray(np.array([[0.0, 127.0, 300.0, -3.0]], dtype=np.float32))
    assert image.mode == "F"
    assert pixels(load_image(image))[0, :, 0].tolist() == [0, 127, 255, 0]


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    path = save(Image.new("RGB", (40, 30)), tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert load_image(path).size == (30, 40)


def test_pil_image_source_opened_lazily():
    with Image.open(COFFEE) as lazy:
        image = load_image(lazy)
    assert np.array_equal(pixels(image), pixels(load_image(COFFEE)))


def test_numpy_arrays():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(pixels(load_image(rgb)), rgb)
    bgr_view = rgb[..., ::-1]
    assert np.array_equal(pixels(load_image(bgr_view)), bgr_view)
    assert np.array_equal(pixels(load_image(rgb[..., 0])), np.repeat(rgb[..., :1], 3, axis=2))
    rgba = np.concatenate([rgb, np.zeros((5, 7, 1), np.uint8)], axis=2)
    assert np.array_equal(pixels(load_image(rgba)), rgb)
    assert load_image(np.zeros((1, 1, 3), np.uint8)).size == (1, 1)


# -------------------------------------------------------------- loading: bad


def test_image_load_error_is_value_error():
    assert issubclass(ImageLoadError, ValueError)


def test_missing_path(tmp_path):
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "nowhere.jpg")


def test_directory(tmp_path):
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello, not an image\n"])
def test_not_an_image(tmp_path, content):
    path = tmp_path / "notes.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match="not an image file"):
        load_image(path)


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_jpeg(tmp_path, fraction):
    data = CAT.read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: int(len(data) * fraction)])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(path)


def test_pillows_process_wide_choice_is_the_users_and_never_toggled(tmp_path, monkeypatch):
    path = tmp_path / "cut.jpg"
    path.write_bytes(CAT.read_bytes()[:20000])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    seen = []
    original = ImageFile.ImageFile.load

    def load(image):  # what another thread decoding meanwhile would see
        seen.append(ImageFile.LOAD_TRUNCATED_IMAGES)
        return original(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    assert load_image(path).size == Image.open(CAT).size
    assert seen and all(seen)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_is_refused_without_being_opened(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(fifo)  # opening it would block until a writer comes


@pytest.mark.parametrize("size", [(11, 10), (20, 20)])  # over the limit, over twice the limit
def test_decompression_bomb(tmp_path, monkeypatch, recwarn, size):
    path = save(Image.new("RGB", size), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageLoadError) as caught:
        load_image(path)
    message = str(caught.value)
    assert f"has {size[0] * size[1]} pixels" in message and "MAX_IMAGE_PIXELS = 100 pixels" in message
    assert "PIL.Image.MAX_IMAGE_PIXELS" in message
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)
    assert load_image(path).size == size


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4, 3), np.float32),
        np.zeros((4, 4, 3), np.uint16),
        np.zeros((4, 4, 3), bool),
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((4, 4, 3, 1), np.uint8),
        np.zeros((4,), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
    ],
)
def test_bad_arrays(array):
    with pytest.raises(ImageLoadError, match="HxWx3 uint8"):
        load_image(array)


@pytest.mark.parametrize("source", [b"\xff\xd8", 42, None, [1, 2, 3], torch.zeros(3, 4, 4)])
def test_unsupported_source_types(source):
    with pytest.raises(ImageLoadError, match="cannot load an image from an object of type"):
        load_image(source)


def test_unconvertible_mode():
    with pytest.raises(ImageLoadError, match="cannot convert La"):
        load_image(Image.new("La", (1, 1)))


# ---------------------------------------------------------------- transforms


def mmpretrain_resize_edge(width: int, height: int, scale: int) -> tuple[int, int]:
    """ResizeEdge(edge='short'): short side to scale, long side floor(scale * long / short)."""
    if width < height:
        return scale, scale * height // width
    return scale * width // height, scale


def rescale_size_rule(width: int, height: int, scale: int) -> tuple[int, int]:
    """mmcv's rescale_size (rounds), which ResizeEdge does NOT use."""
    factor = scale / min(width, height)
    return int(width * factor + 0.5), int(height * factor + 0.5)


SIZES = [(w, h) for w in (1, 2, 3, 7, 20, 37, 223, 224, 235, 236, 237, 300, 451, 500, 1000, 4031)
         for h in (1, 5, 20, 99, 236, 237, 238, 301, 333, 400, 999, 3024)]


@pytest.mark.parametrize("scale", [224, 236, 256, 384])
def test_short_edge_size_rule(scale):
    for width, height in SIZES:
        assert short_edge_size(width, height, scale) == mmpretrain_resize_edge(width, height, scale)


def test_short_edge_size_truncates_where_rounding_would_not():
    for width, height, expected in [(37, 301, (236, 1919)), (500, 237, (497, 236)),
                                    (300, 451, (236, 354)), (451, 300, (354, 236))]:
        assert short_edge_size(width, height, 236) == expected
    differing = [s for s in SIZES if short_edge_size(*s, 236) != rescale_size_rule(*s, 236)]
    assert (37, 301) in differing and len(differing) > 20


def test_resize_short_edge_is_pillow_bicubic():
    image = load_image(CAT).resize((97, 61))
    resized = resize_short_edge(image, 236)
    assert resized.size == short_edge_size(97, 61, 236) == (375, 236)
    assert np.array_equal(pixels(resized), pixels(image.resize((375, 236), Image.Resampling.BICUBIC)))
    via_torchvision = TF.resize(image, [236, 375], TF.InterpolationMode.BICUBIC)
    assert np.array_equal(pixels(resized), pixels(via_torchvision))
    with pytest.raises(ValueError, match="interpolation"):
        resize_short_edge(image, 236, "cubic")


def column_index_image(width: int, height: int) -> Image.Image:
    """R holds the column index, G the row index."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], axis=2).astype(np.uint8))


@pytest.mark.parametrize(
    ("width", "height", "left", "top"),
    [(224, 224, 0, 0), (236, 236, 6, 6), (237, 230, 6, 3), (239, 225, 8, 0), (241, 226, 8, 1)],
)
def test_center_crop_offsets_round_half_to_even(width, height, left, top):
    crop = pixels(center_crop(column_index_image(width, height), 224))
    assert crop.shape == (224, 224, 3)
    assert (crop[0, 0, 0], crop[0, 0, 1]) == (left, top)


def test_center_crop_keeps_short_sides_whole():
    crop = center_crop(column_index_image(100, 250), 224)
    assert crop.size == (100, 224)
    assert tuple(pixels(crop)[0, 0, :2]) == (0, 13)


@pytest.mark.parametrize("key", sorted(MMPRETRAIN_CROPS))
def test_matches_mmpretrain_pixel_for_pixel(key):
    expected = MMPRETRAIN_CROPS[key]
    crop = to_uint8_crop(REPO / key)
    assert crop.dtype == torch.uint8 and crop.shape == (3, 224, 224)
    assert torch.equal(crop, expected)


def test_fixture_covers_the_odd_cases():
    names = {Path(key).stem for key in MMPRETRAIN_CROPS}
    assert {"cat", "coffee", "tiny_1x1", "tall_37x301", "wide_500x237", "strip_1000x20",
            "grey_L_97x131", "rgba_123x89", "grey16_80x61", "palette_trns_90x70"} <= names


def test_every_source_kind_gives_the_same_crop():
    expected = MMPRETRAIN_CROPS["demo/coffee.jpg"]
    with Image.open(COFFEE) as image:
        assert torch.equal(to_uint8_crop(image), expected)
        assert torch.equal(to_uint8_crop(np.asarray(image.convert("RGB"))), expected)


def test_normalisation_constants():
    assert IMAGENET_MEAN == (123.675, 116.28, 103.53)
    assert IMAGENET_STD == (58.395, 57.12, 57.375)
    transform = build_test_transform()
    assert transform == TestTransform(236, 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic")


def test_normalisation_values():
    colour = (124, 117, 104)
    out = build_test_transform()(Image.new("RGB", (300, 250), colour))
    assert out.dtype == torch.float32 and out.shape == (3, 224, 224)
    for channel in range(3):
        expected = (colour[channel] - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.allclose(out[channel], torch.tensor(expected), atol=1e-6)


def test_transform_is_crop_minus_mean_over_std():
    crop = MMPRETRAIN_CROPS["demo/cat.jpg"].float()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.equal(build_test_transform()(CAT), (crop - mean) / std)


def test_transform_options():
    out = build_test_transform(resize_edge=64, crop_size=32, mean=(0, 0, 0), std=(1, 1, 1))(CAT)
    assert torch.equal(out, to_uint8_crop(CAT, 64, 32).float())
    with pytest.raises(ValueError, match="interpolation"):
        build_test_transform(interpolation="area")
    with pytest.raises(ValueError, match="mean and std"):
        build_test_transform(mean=(0.5,))


def test_preprocess_batches_any_sources():
    with Image.open(CAT) as cat:
        batch = preprocess([CAT, str(COFFEE), cat, np.asarray(load_image(COFFEE))])
    assert batch.shape == (4, 3, 224, 224) and batch.dtype == torch.float32
    transform = build_test_transform()
    assert torch.equal(batch[0], transform(CAT)) and torch.equal(batch[2], batch[0])
    assert torch.equal(batch[1], batch[3])
    assert torch.equal(preprocess(CAT), batch[:1])
    with pytest.raises(ValueError, match="at least one"):
        preprocess([])


def test_exact_size_resizes_both_sides_without_crop():
    """Florence-2's processor: both sides to the (height, width) asked for, bicubic, no crop."""
    image = load_image(CAT).resize((97, 61))
    out = build_test_transform(exact_size=(40, 50))(image)
    resized = torch.from_numpy(pixels(image.resize((50, 40), Image.Resampling.BICUBIC)).copy())
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(out, (resized.permute(2, 0, 1).float() - mean) / std)
    assert TestTransform(exact_size=(40, 50)) == build_test_transform(exact_size=(40, 50))
    assert TestTransform().exact_size is None


@pytest.mark.parametrize("size", [(0, 5), (5,), (5.0, 5), (True, 5)])
def test_exact_size_must_be_two_positive_integers(size):
    with pytest.raises(ValueError, match="exact_size"):
        build_test_transform(exact_size=size)
