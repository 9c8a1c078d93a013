"""``davit test`` / ``tools/test.py``: the options parse as mmpretrain's tools/test.py."""
import pytest

from davit.cli.app import build_parser, run_subcommand


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
