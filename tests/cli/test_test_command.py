"""``davit test`` / ``tools/test.py``: the options parse as mmpretrain's tools/test.py, and a bad
config is one line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from davit.cli.app import build_parser, run_subcommand
from davit.config import load_config
from davit.model import DaViTClassifier
from tests.paths import REPO

DIGITS = REPO / "configs" / "davit" / "davit-digits_1xb64.py"


def test_tools_prog_names_itself(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_subcommand("test", ["--help"], prog="tools/test.py")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tools/test.py") and "--cfg-options" in out and "--launcher" in out


def test_defaults_and_bare_amp():
    args = build_parser().parse_args(["test", "cfg.py", "ckpt.pth", "--amp"])
    assert (args.amp, args.out_item, args.cfg_options, args.batch_size) == ("fp16", "pred", [], None)


@pytest.mark.parametrize("option", [["--batch-size", "0"], ["--num-workers", "-1"], ["--limit", "0"]])
def test_bad_values_are_refused_by_the_parser(option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["test", "cfg.py", "ckpt.pth", *option])
    assert exit_info.value.code == 2
    assert "must be" in capsys.readouterr().err


def image_folders(root):
    """Two classes of two 32x32 images."""
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (40 * i, 200, 0)).save(root / label / f"{i}.png")
    return root


def error_lines(args, tmp_path):
    """The lines of a failing ``davit ARGS`` that report the error (stderr's last line)."""
    done = subprocess.run([sys.executable, "-m", "davit", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.splitlines()
    assert lines[-1].startswith(f"davit {args[0]}: error: ")
    return [line for line in done.stdout.splitlines() + lines if "error" in line.lower()]


@pytest.mark.parametrize("override, message", [
    (None, "config file not found"),
    ("test_dataloader.batch_size=abc", "test_dataloader.batch_size must be a positive integer, got 'abc'"),
    ("test_dataloader.num_workers=-1", "test_dataloader.num_workers must be zero or a positive integer, got -1"),
    ("test_evaluator.topk=x", "test_evaluator.topk must be a positive integer or a list of them"),
])
def test_a_bad_config_is_one_line(override, message, tmp_path):
    data = image_folders(tmp_path / "data")
    checkpoint = tmp_path / "digits.pth"
    arch = load_config(DIGITS)["model"]["backbone"]["arch"]
    torch.save(DaViTClassifier(arch, num_classes=10).state_dict(), checkpoint)
    config = str(DIGITS) if override else str(tmp_path / "nope.py")
    options = ["--cfg-options", f"test_dataloader.dataset.data_root={data}", override] if override else []
    lines = error_lines(["test", config, str(checkpoint), "--device", "cpu", "--work-dir",
                           str(tmp_path / "work"), *options], tmp_path)
    assert len(lines) == 1 and message in lines[0], lines


def test_fewer_classes_than_the_top_k(tmp_path, capsys):
    """The fine-tuning walkthrough's test step: a 2-class model, the config's topk=(1, 5)."""
    data = image_folders(tmp_path / "data")
    checkpoint = tmp_path / "two.pth"
    arch = load_config(DIGITS)["model"]["backbone"]["arch"]
    torch.save(DaViTClassifier(arch, num_classes=2).state_dict(), checkpoint)
    assert run_subcommand("test", [str(DIGITS), str(checkpoint), "--device", "cpu", "--work-dir",
                                   str(tmp_path / "work"), "--cfg-options", "model.head.num_classes=2",
                                   f"test_dataloader.dataset.data_root={data}"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("accuracy/top1: ") and "top5" not in captured.out
    assert captured.err.count("test_evaluator.topk 5 is more than the model's 2 classes: "
                              "reporting top-1 only") == 1


def test_limit_draws_across_the_classes(tmp_path, capsys):
    """`davit test --limit 8` on two sorted classes of ten: four images of each class, evenly
    strided, the same ones every run, and one log line that says so (not the first 8 files,
    which are all of class a)."""
    data = tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (32, 32), (20 * i, 200, 0)).save(data / label / f"{i}.png")
    checkpoint = tmp_path / "two.pth"
    arch = load_config(DIGITS)["model"]["backbone"]["arch"]
    torch.save(DaViTClassifier(arch, num_classes=2).state_dict(), checkpoint)
    argv = [str(DIGITS), str(checkpoint), "--device", "cpu", "--num-workers", "0", "--limit", "8",
            "--cfg-options", "model.head.num_classes=2", f"test_dataloader.dataset.data_root={data}"]
    picked = []
    for run in ("one", "two"):
        out = tmp_path / f"{run}.json"
        assert run_subcommand("test", [*argv, "--work-dir", str(tmp_path / run), "--out", str(out)]) == 0
        err = capsys.readouterr().err
        assert "--limit 8: evaluating 8 of 20 images, drawn evenly from 2 of 2 classes" in err
        assert "\r" not in err  # no progress bar redraws in a captured log
        picked.append([(r["image"], r["gt_label"]) for r in json.loads(out.read_text())])
    assert picked[0] == picked[1]
    assert [label for _, label in picked[0]] == [0] * 4 + [1] * 4
    assert [Path(path).name for path, _ in picked[0]] == ["1.png", "3.png", "6.png", "8.png"] * 2
