"""Property-based tests (Hypothesis): whatever an image, a card, a config override or a checkpoint
file holds, the library answers with a result or its own one-line error, never a traceback, and never
pays for a resize over its pixel budget."""
from __future__ import annotations

import io
import math
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save as save_safetensors

from davit.checkpoint.card import ModelCard
from davit.checkpoint.io import read_checkpoint_file
from davit.config import load_config
from davit.data import build_test_transform
from davit.data.transforms import RESIZED_PIXEL_BUDGET, resized_size
from davit.errors import DavitError
from tests.paths import REPO

QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Modes each format can write (Pillow 13 no longer writes 32-bit "I" as PNG).
FORMATS = {"PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"), "JPEG": ("L", "RGB", "CMYK"),
           "GIF": ("L", "P"), "TIFF": ("1", "L", "RGB", "RGBA", "CMYK", "I;16", "I", "F"), "WEBP": ("RGB", "RGBA"),
           "BMP": ("1", "L", "P", "RGB")}


@st.composite
def encoded_images(draw):
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[fmt]))
    width, height = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA").convert("RGB" if mode in ("1", "P", "CMYK") else "RGBA")
    image = image.convert(mode) if mode not in ("I;16", "I", "F") else image.convert("L").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    data = buffer.getvalue()
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))  # truncated files too
    return data if cut is None else data[:cut]


@QUICK
@given(encoded_images())
def test_any_encoded_image_gives_a_tensor_or_one_image_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("img") / "x.img"
    path.write_bytes(data)
    try:
        tensor = build_test_transform(36, 32)(str(path))
    except DavitError as error:
        assert "\n" not in str(error) and str(path) in str(error)
    else:
        assert tensor.shape == (3, 32, 32) and bool(torch.isfinite(tensor).all())


@QUICK
@given(st.integers(1, 10**6), st.integers(1, 10**6), st.integers(1, 4096))
def test_no_aspect_ratio_resizes_over_the_budget(width, height, edge):
    transform = build_test_transform(edge, min(edge, 224))
    try:
        size = resized_size(transform, width, height)
    except DavitError as error:
        assert "would be resized" in str(error)
    else:
        assert size[0] * size[1] <= RESIZED_PIXEL_BUDGET and min(size) == edge


numbers = st.one_of(st.integers(-10**6, 10**9), st.floats(allow_nan=True, allow_infinity=True), st.none(),
                    st.text(max_size=5), st.booleans())


@QUICK
@given(st.fixed_dictionaries({}, optional={
    "resize_edge": numbers, "crop_size": numbers, "interpolation": st.sampled_from(["bicubic", "bilinear", "x", ""]),
    "mean": st.lists(numbers, max_size=4), "std": st.lists(numbers, max_size=4),
    "exact_size": st.one_of(st.none(), st.lists(numbers, max_size=3))}),
    st.sampled_from(["tiny", "small", "nope", None]), st.one_of(st.integers(-3, 2000), st.text(max_size=3)))
def test_any_card_loads_or_is_one_checkpoint_error(preprocessing, arch, num_classes):
    data = {"arch": arch, "num_classes": num_classes, "preprocessing": preprocessing, "semantics": "official"}
    try:
        card = ModelCard.from_dict(data, "fuzz.safetensors")
    except DavitError as error:
        assert "\n" not in str(error) and "fuzz.safetensors" in str(error)
    else:
        pre = card.preprocessing
        assert all(v > 0 and math.isfinite(v) for v in pre.std) and 1 <= pre.crop_size <= 4096
        assert 1 <= pre.resize_edge <= 4096


keys = st.from_regex(r"\+?[a-z_]{1,8}(\.[a-z0-9_]{1,8}){0,3}", fullmatch=True) | st.text(max_size=12)
values = st.text(max_size=20)


@QUICK
@given(st.lists(st.tuples(keys, values), max_size=4))
def test_any_override_applies_or_is_one_config_error(overrides):
    try:
        cfg = load_config(REPO / "configs" / "davit" / "davit-digits_1xb64.py", [f"{k}={v}" for k, v in overrides])
    except DavitError as error:
        assert "\n" not in str(error).strip()
    else:
        assert isinstance(cfg, dict) and "model" in cfg


def _valid_files() -> dict[str, bytes]:
    state = {"backbone.stem.conv.weight": torch.rand(4, 3, 3, 3), "head.fc.bias": torch.rand(3)}
    pth = io.BytesIO()
    torch.save({"state_dict": state, "meta": {"davit_card": "{}"}}, pth)
    return {".pth": pth.getvalue(), ".safetensors": save_safetensors(state, {"format": "pt"}),
            ".bin": pickle.dumps({"a": 1})}


VALID = _valid_files()


@QUICK
@given(st.sampled_from(sorted(VALID)), st.data())
def test_a_mutated_checkpoint_is_read_or_refused_in_one_line(tmp_path_factory, suffix, data):
    blob = bytearray(VALID[suffix])
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    blob = blob[:data.draw(st.integers(0, len(blob)))]
    path = tmp_path_factory.mktemp("ckpt") / f"fuzz{suffix}"
    path.write_bytes(bytes(blob))
    try:
        state_dict, _ = read_checkpoint_file(path)
    except DavitError as error:
        assert "\n" not in str(error)
    else:
        assert all(isinstance(value, torch.Tensor) for value in state_dict.values())


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS as Linux has it")
def test_a_hostile_header_costs_bounded_memory():
    """A 100-byte PNG that claims 60000 x 1 pixels and a header claiming a huge image are refused under
    a 3 GiB address-space limit (the short-edge rule would ask ~800 GB of the first)."""
    script = textwrap.dedent(f"""
        import io, resource, sys
        sys.path.insert(0, {str(REPO / "src")!r})
        from PIL import Image
        from davit.data import build_test_transform
        from davit.errors import DavitError
        buffer = io.BytesIO(); Image.new("L", (60000, 1)).save(buffer, "PNG")
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        try:
            build_test_transform()(Image.open(io.BytesIO(buffer.getvalue())))
        except DavitError as error:
            print("refused:", error)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "would be resized" in done.stdout and "MemoryError" not in done.stderr
