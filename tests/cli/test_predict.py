"""davit predict."""
import json

import pytest
import torch

from davit.cli.app import run_subcommand
from tests.paths import REPO

CAT = str(REPO / "demo" / "cat.jpg")


def test_predict_json_and_bad_file(tiny_mm_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    code = run_subcommand("predict", [CAT, str(bad), "--checkpoint", str(tiny_mm_checkpoint),
                                      "--topk", "3", "--json"])
    captured = capsys.readouterr()
    assert code == 1
    records = json.loads(captured.out)
    assert len(records[0]["predictions"]) == 3 and "class" in records[0]["predictions"][0]
    assert "bad.png" in records[1]["error"]
    assert "bad.png" in captured.err


def test_each_bad_file_is_reported_once_and_the_good_ones_printed(tiny_mm_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    missing = tmp_path / "missing.jpg"
    code = run_subcommand("predict", [str(bad), CAT, str(missing), "--checkpoint",
                                      str(tiny_mm_checkpoint), "--topk", "2"])
    captured = capsys.readouterr()
    assert code == 1
    errors = captured.err.splitlines()
    assert len(errors) == 2 and all(line.startswith("davit predict: error: ") for line in errors)
    assert "bad.png" in errors[0] and "missing.jpg" in errors[1]
    lines = captured.out.splitlines()
    assert lines[0] == CAT and len(lines) == 3
    score, label, name = lines[1].split(maxsplit=2)
    assert 0 < float(score) <= 1 and 0 <= int(label) < 1000 and name


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_device_error(capsys):
    assert run_subcommand("predict", [CAT, "--model", "davit-tiny", "--device", "cuda"]) == 1
    assert capsys.readouterr().err.startswith("davit predict: error: CUDA is not available")
