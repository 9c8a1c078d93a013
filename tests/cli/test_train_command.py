"""``davit train`` / ``tools/train.py``: the options parse as mmpretrain's tools/train.py."""
import pytest

from davit.cli import main as cli
from davit.cli.app import build_parser


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
