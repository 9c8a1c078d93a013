"""The davit command line: how failures are reported, for every subcommand alike."""
import argparse
import importlib.util
import os
import subprocess
import sys

import pytest

from davit import __version__
from davit.cli import flops as flops_command
from davit.cli import main
from davit.cli.app import SUBCOMMANDS, build_parser, run_subcommand
from davit.errors import UnknownModelError
from tests.paths import REPO


@pytest.mark.parametrize("args, message", [
    (["predict", "demo/cat.jpg", "--model", "davit-tiny", "--checkpoint", "nowhere.pth"], "does not exist"),
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


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"davit {__version__}\n"


def _actions_without_help(parser: argparse.ArgumentParser, name: str) -> list[str]:
    """``name option`` for every action of ``parser`` and its sub-parsers that has no help
    (``-h`` aside; ``argparse.SUPPRESS`` hides an option on purpose)."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if action.help is None:
            missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                missing += _actions_without_help(sub, f"{name} {command}")
    return missing


def test_every_option_of_every_subcommand_has_help():
    assert _actions_without_help(build_parser(), "davit") == []


def test_every_option_of_the_tools_has_help():
    for path in sorted((REPO / "tools").glob("*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, "build_parser"):
            assert _actions_without_help(module.build_parser(), path.name) == []


def test_a_closed_pipe_is_not_reported_as_an_error():
    import subprocess
    import sys

    flood = ("import argparse, sys\n"
             "from davit.cli import app\n"
             "def run(args):\n"
             "    for _ in range(100000):\n"
             "        print('x' * 100)\n"
             "    return 0\n"
             "sys.exit(app.execute(argparse.Namespace(run=run, verbose=False), 'davit list'))\n")
    done = subprocess.run(["bash", "-c", f'"{sys.executable}" -c "$0" | head -1; echo "${{PIPESTATUS[0]}}" >&2',
                           flood], capture_output=True, text=True, timeout=120)
    assert done.stdout == "x" * 100 + "\n"
    assert done.stderr.strip() == "141"  # no message, no traceback
