"""Key layouts: every key of every published format maps consistently, and conversions are lossless."""
import csv

import pytest
import torch

from davit.checkpoint.formats import CheckpointFormatError, convert_state_dict, detect_format, from_davit, to_davit
from davit.model import DaViTClassifier
from tests.paths import FIXTURES

FORMAT_COLUMNS = ["official", "mmpretrain", "timm"]


def _rows(arch):
    with open(FIXTURES / "keys" / f"davit-{arch}.official-mmpretrain-timm.tsv") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _shapes(arch, fmt):
    lines = (FIXTURES / "keys" / f"davit-{arch}.{fmt}.txt").read_text().splitlines()
    return {key: [int(v) for v in shape.strip("[]").split(",") if v.strip()]
            for key, shape in (line.split(" ", 1) for line in lines)}


@pytest.mark.parametrize("arch", ["tiny", "small", "base"])
def test_published_key_tables_map_row_by_row(arch):
    rows = _rows(arch)
    with torch.device("meta"):
        model_keys = DaViTClassifier(arch).state_dict()
    for row in rows:
        ours = {to_davit({row[fmt]: None}, fmt).popitem()[0] for fmt in FORMAT_COLUMNS}
        assert len(ours) == 1, row
        (key,) = ours
        assert key in model_keys
        for fmt in FORMAT_COLUMNS:
            assert from_davit({key: None}, fmt) == {row[fmt]: None}
    assert len(rows) == len(model_keys)


@pytest.mark.parametrize("arch", ["tiny", "small", "base"])
@pytest.mark.parametrize("fmt", FORMAT_COLUMNS)
def test_model_converts_to_every_published_layout_with_exact_shapes(arch, fmt):
    with torch.device("meta"):
        state = DaViTClassifier(arch).state_dict()
    converted = from_davit(state, fmt)
    expected = _shapes(arch, fmt)
    assert {k: list(v.shape) for k, v in converted.items()} == expected
    assert detect_format(dict.fromkeys(expected)) == fmt


def test_golden_official_mmpretrain_timm_official_is_identical(golden):
    official = golden["state_dict_official"]
    mm = convert_state_dict(official, to="mmpretrain")
    timm_sd = convert_state_dict(mm, to="timm")
    back = convert_state_dict(timm_sd, to="official")
    assert detect_format(mm) == "mmpretrain" and detect_format(timm_sd) == "timm"
    assert list(back) == list(official)
    assert all(torch.equal(back[k], official[k]) for k in official)


def test_foreign_keys_are_refused():
    with pytest.raises(CheckpointFormatError, match="fit no DaViT format"):
        detect_format({"encoder.layer.0.weight": torch.zeros(1)})
    with pytest.raises(CheckpointFormatError, match="not part of the official"):
        to_davit({"patch_embeds.0.proj.weight": torch.zeros(1), "extra.thing": torch.zeros(1)},
                 "official")
    with pytest.raises(CheckpointFormatError, match="no tensors"):
        detect_format({})
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        from_davit({}, "caffe")


def test_davit_format_accepts_output_norms_of_dense_backbones():
    from dataclasses import replace

    from davit.model import ARCHS, DaViT

    with torch.device("meta"):
        backbone = DaViT(replace(ARCHS["tiny"], out_norms=True), out_indices=(0, 1, 2, 3))
    state_dict = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    assert any(".out_norms." in k for k in state_dict)
    assert detect_format(state_dict) == "davit"
    assert to_davit(state_dict) == state_dict
