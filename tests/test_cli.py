"""The davit command line."""
import json
import os
import subprocess
import sys

import pytest
import torch

from davit.checkpoint.formats import detect_format, from_davit
from davit.checkpoint.io import load_state_dict_file
from davit.cli import main
from davit.model import DaViTClassifier

from .conftest import REPO

SEED_TABLE = {"davit-tiny_3rdparty_in1k": (28_360_168, 4.54e9), "davit-small_3rdparty_in1k": (49_745_896, 8.80e9),
              "davit-base_3rdparty_in1k": (87_954_408, 15.51e9)}


@pytest.mark.parametrize("name", list(SEED_TABLE))
def test_flops_json_matches_seed_table(name, capsys):
    assert main(["flops", name, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    params, flops = SEED_TABLE[name]
    assert isinstance(result["params"], int) and isinstance(result["flops"], int)
    assert result["params"] == params
    assert abs(result["flops"] / flops - 1) < 0.005


def test_flops_mmpretrain_semantics_equal_the_reference_counts(capsys):
    expected = {"tiny": 4_539_698_688, "small": 8_799_942_144, "base": 15_509_702_656}
    for arch, flops in expected.items():
        assert main(["flops", arch, "--semantics", "mmpretrain", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["flops"] == flops


def test_flops_other_input_size(capsys):
    assert main(["flops", "davit-giant", "--input-size", "97", "130", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == 1_406_470_120 and result["input_size"] == [97, 130]
    assert result["flops"] > 0


def test_list(capsys):
    assert main(["list", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "davit-tiny_3rdparty_in1k" in out and "davit-small" not in out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-mm.pth"
    torch.save({"state_dict": from_davit(DaViTClassifier("tiny").state_dict(), "mmpretrain")}, path)
    return path


def test_predict_json_and_bad_file(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    code = main(["predict", str(REPO / "demo" / "cat.jpg"), str(bad), "--checkpoint", str(checkpoint),
                 "--topk", "3", "--json"])
    captured = capsys.readouterr()
    assert code == 1
    records = json.loads(captured.out)
    assert len(records[0]["predictions"]) == 3 and "class" in records[0]["predictions"][0]
    assert "bad.png" in records[1]["error"]
    assert "bad.png" in captured.err


def test_convert_between_formats(checkpoint, tmp_path, capsys):
    out = tmp_path / "tiny-official.safetensors"
    assert main(["convert", str(checkpoint), str(out), "--to", "official"]) == 0
    converted = load_state_dict_file(out)
    assert detect_format(converted) == "official"
    back = tmp_path / "back.pth"
    assert main(["convert", str(out), str(back), "--to", "mmpretrain"]) == 0
    original = load_state_dict_file(checkpoint)
    again = load_state_dict_file(back)
    assert sorted(again) == sorted(original) and all(torch.equal(again[k], original[k]) for k in original)


@pytest.mark.parametrize("args, message", [
    (["predict", "nowhere.jpg", "--model", "davit-tiny", "--checkpoint", "nowhere.pth"], "does not exist"),
    (["flops", "davit-tinny"], "Did you mean"),
    (["convert", "nowhere.pth", "out.pth", "--to", "timm"], "does not exist"),
])
def test_errors_are_one_line_without_traceback(args, message):
    env = {**os.environ, "TORCH_HOME": "/nonexistent-torch-home"}
    result = subprocess.run([sys.executable, "-m", "davit", *args], cwd=REPO, capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("davit: error:") and message in lines[0]
