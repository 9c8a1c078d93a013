"""Key layouts: every key of every published format maps consistently, and conversions are lossless."""
import csv
import logging
from dataclasses import replace

import pytest
import torch

from davit.checkpoint.formats import CheckpointFormatError, convert_state_dict, detect_format, from_davit, to_davit
from davit.model import ARCHS, DaViT, DaViTClassifier
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
    with torch.device("meta"):
        backbone = DaViT(replace(ARCHS["tiny"], out_norms=True), out_indices=(0, 1, 2, 3))
    state_dict = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    assert any(".out_norms." in k for k in state_dict)
    assert detect_format(state_dict) == "davit"
    assert to_davit(state_dict) == state_dict


@pytest.mark.parametrize("arch", ["tiny", "small", "base"])
def test_dense_backbones_write_and_read_the_official_dense_key_tables(arch):
    """``official-dense`` is the official detection backbone's file (``norm{i}`` per output stage),
    ``mmdet`` the same below a detector's ``backbone.``."""
    with torch.device("meta"):
        backbone = DaViT(replace(ARCHS[arch], out_norms=True), out_indices=(0, 1, 2, 3))
    ours = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    expected = _shapes(arch, "official-dense")
    for fmt, prefix in (("official-dense", ""), ("mmdet", "backbone.")):
        converted = from_davit(ours, fmt)
        assert {k: list(v.shape) for k, v in converted.items()} == {prefix + k: v for k, v in expected.items()}
        assert detect_format(converted) == fmt
        assert to_davit(converted) == ours


def test_a_detectors_neck_and_heads_are_skipped_and_a_classifier_is_written_without_its_head(caplog):
    caplog.set_level(logging.INFO, logger="davit")
    with torch.device("meta"):
        classifier = DaViTClassifier("tiny").state_dict()
    detector = from_davit(classifier, "mmdet")
    assert all(k.startswith(("backbone.patch_embeds.", "backbone.main_blocks.")) for k in detector)
    assert "left out 4 tensor(s): head.norm.weight, head.norm.bias, head.fc.weight, head.fc.bias" in caplog.text
    detector |= {"neck.fpn_convs.0.conv.weight": torch.zeros(1), "roi_head.bbox_head.fc_cls.bias": torch.zeros(1)}
    read = to_davit(detector)
    assert "ignored 2 tensor(s) of the detector outside its backbone (neck, roi_head)" in caplog.text
    assert read.keys() == {k for k in classifier if k.startswith("backbone.")}
