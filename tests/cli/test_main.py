"""The davit command line: how failures are reported, for every subcommand alike."""
import os
import subprocess
import sys

import pytest

from davit.cli import flops as flops_command
from davit.cli import main
from davit.cli.app import SUBCOMMANDS, run_subcommand
from davit.errors import UnknownModelError
from tests.paths import REPO


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
    assert len(lines) == 1 and lines[0].startswith(f"davit {args[0]}: error:") and message in lines[0]


def test_a_davit_error_is_one_line_and_exit_status_1(capsys):
    assert run_subcommand("flops", ["davit-tinny"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "davit flops: error: unknown model 'davit-tinny'. Did you mean 'davit-tiny', 'davit-giant', "
        "'davit-tiny_msft_in1k'? `davit list` shows every name."]


def test_prog_names_the_caller(capsys):
    assert run_subcommand("flops", ["davit-tinny"], prog="tools/flops.py") == 1
    assert capsys.readouterr().err.startswith("tools/flops.py: error: unknown model")


def test_verbose_shows_the_traceback_of_a_davit_error():
    with pytest.raises(UnknownModelError, match="davit-tinny"):
        run_subcommand("flops", ["davit-tinny", "-v"])


def test_an_unexpected_exception_is_not_swallowed(monkeypatch, capsys):
    def bug(args):
        raise RuntimeError("bug")

    monkeypatch.setattr(flops_command, "run", bug)
    with pytest.raises(RuntimeError, match="bug"):
        run_subcommand("flops", ["tiny"])
    assert "error" not in capsys.readouterr().err


def test_ctrl_c_is_exit_status_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(flops_command, "run", interrupted)
    assert run_subcommand("flops", ["tiny"]) == 130
    assert capsys.readouterr().err == "davit flops: interrupted\n"


@pytest.mark.parametrize("argv", [["-v", "flops", "davit-tinny"], ["flops", "davit-tinny", "-v"]])
def test_verbose_before_or_after_the_subcommand(argv):
    with pytest.raises(UnknownModelError):
        main(argv)


def test_every_subcommand_is_listed_in_the_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUBCOMMANDS)
