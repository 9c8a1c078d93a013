"""``davit train`` / ``tools/train.py``: the options parse as mmpretrain's tools/train.py, and a
bad config is one line."""
import pytest

from davit.cli import main as cli
from davit.cli.app import build_parser
from tests.cli.test_test_command import DIGITS, error_lines, image_folders


def test_cli_delegates_train(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["train", "--help"])
    assert exit_info.value.code == 0
    assert "davit train" in capsys.readouterr().out


def test_bare_flags_take_their_defaults():
    args = build_parser().parse_args(["train", "cfg.py", "--resume", "--amp", "--ema",
                                      "--local_rank", "1", "--cfg-options", "a=1", "b=2"])
    assert (args.resume, args.amp, args.ema, args.local_rank) == ("auto", "fp16", 0.9998, 1)
    assert args.cfg_options == ["a=1", "b=2"] and args.no_validate is False


def test_bad_values_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "cfg.py", "--accumulate", "0"])
    assert exit_info.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    (None, "config file not found"),
    ("train_cfg.max_epochs=abc", "train_cfg.max_epochs must be a positive integer, got 'abc'"),
    ("train_dataloader.batch_size=0", "train_dataloader.batch_size must be a positive integer, got 0"),
    ("train_dataloader.num_workers=x", "train_dataloader.num_workers must be zero or a positive integer, got 'x'"),
    ("optim_wrapper.optimizer.lr=abc", "optim_wrapper.optimizer.lr must be a positive number, got 'abc'"),
    ("val_dataloader.batch_size=-2", "val_dataloader.batch_size must be a positive integer, got -2"),
])
def test_a_bad_config_is_one_line(override, message, tmp_path):
    data = image_folders(tmp_path / "data")
    config = str(DIGITS) if override else str(tmp_path / "nope.py")
    options = ["--cfg-options", "train_dataloader.batch_size=2", f"train_dataloader.dataset.data_root={data}",
               f"val_dataloader.dataset.data_root={data}", override] if override else []
    lines = error_lines(["train", config, "--device", "cpu", "--work-dir", str(tmp_path / "work"), *options],
                        tmp_path)
    assert len(lines) == 1 and message in lines[0], lines
