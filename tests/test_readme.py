"""README.md's command lines run as written: every ``davit ...`` and ``python tools/...`` line of
its ```bash blocks parses with the current parsers (nothing is run), the repository files they name
exist, their ``--cfg-options`` fit the config, and the "Command line" block lists every subcommand
and every option."""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

from davit.cli.app import SUBCOMMANDS, build_parser
from davit.config import load_config
from tests.paths import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
SYNOPSIS_HEADING = "## Command line"
# Config placeholders that stand for a file a run writes, and the repository file it is a copy of.
PLACEHOLDERS = {
    "work_dirs/davit-tiny_finetune_custom/davit-tiny_finetune_custom.py":
        "configs/davit/davit-tiny_finetune_custom.py",
}
GLOBAL_OPTIONS = {"-v", "--verbose", "--version"}
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def bash_blocks() -> list[tuple[str, str]]:
    """``(heading, block)`` for every ```bash block of the README, under its ``##`` heading."""
    blocks, heading = [], ""
    for part in re.split(r"^(```bash\n.*?^```)$", README, flags=re.M | re.S):
        if part.startswith("```bash"):
            blocks.append((heading, part.removeprefix("```bash\n").removesuffix("```")))
        else:
            headings = re.findall(r"^(##? .*)$", part, flags=re.M)
            heading = headings[-1] if headings else heading
    return blocks


def command_lines(block: str) -> list[str]:
    """The block's commands, with ``\\``-continued lines joined (comment lines aside)."""
    lines = (line.strip() for line in block.replace("\\\n", " ").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def synopsis_lines() -> list[str]:
    """The "Command line" block's lines, with indented continuation lines joined."""
    block = next(b for heading, b in bash_blocks() if heading == SYNOPSIS_HEADING)
    lines: list[str] = []
    for line in block.splitlines():
        text = line.split("#")[0].rstrip()
        if text and line.startswith(" ") and lines:
            lines[-1] += " " + text.strip()
        elif text:
            lines.append(text)
    return lines


def parser_and_argv(tokens: list[str]) -> tuple[argparse.ArgumentParser, list[str]] | None:
    """The parser a command line goes to and its arguments (None for other programs)."""
    if tokens[0] == "torchrun":  # torchrun's options, then the script
        tokens = ["python", *tokens[next(i for i, t in enumerate(tokens) if t.endswith(".py")):]]
    if tokens[0] == "davit":
        return build_parser(), tokens[1:]
    if tokens[0] not in ("python", "python3") or not tokens[1].startswith("tools/"):
        return None
    script = REPO / tokens[1]
    assert script.is_file(), f"{tokens[1]} does not exist"
    if script.stem in SUBCOMMANDS:  # tools/test.py, tools/train.py
        return build_parser(), [script.stem, *tokens[2:]]
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser(), tokens[2:]


def runnable_lines() -> list[str]:
    return [line for heading, block in bash_blocks() if heading != SYNOPSIS_HEADING
            for line in command_lines(block)]


@pytest.mark.parametrize("line", runnable_lines())
def test_readme_command_parses(line: str) -> None:
    tokens = shlex.split(line, comments=True)
    for token in tokens:
        if token.startswith(("configs/", "demo/", "tools/", "benchmarks/")):
            assert (REPO / token).exists(), f"{token} in {line!r} does not exist"
    target = parser_and_argv(tokens)
    if target is None:
        return  # make, pip, benchmarks/: not a davit command line
    parser, argv = target
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{line!r} does not parse: {stderr.getvalue().strip()}")
    config = getattr(args, "config", None)
    if config is not None:
        path = REPO / PLACEHOLDERS.get(config, config)
        assert path.is_file(), f"{config} in {line!r} is not a config of the repository"
        load_config(path, args.cfg_options)  # every --cfg-options key exists


def _option_strings(parser: argparse.ArgumentParser) -> list[list[str]]:
    """Each documented option's spellings (help, hidden options and the global ones aside)."""
    return [action.option_strings for action in parser._actions
            if action.option_strings and action.help != argparse.SUPPRESS
            and not isinstance(action, argparse._HelpAction)
            and not set(action.option_strings) & GLOBAL_OPTIONS]


def _synopsis() -> dict[str, set[str]]:
    """The options each synopsis line names, by subcommand ("" for the global lines)."""
    named: dict[str, set[str]] = {}
    for line in synopsis_lines():
        words = line.split()
        assert words[0] == "davit", f"{line!r} is not a davit command"
        bare = [w for w in words[1:] if not w.startswith(("[", "-"))]
        command = bare[0] if bare and bare[0] in SUBCOMMANDS else ""
        assert command or not bare or bare[0] == "COMMAND", f"{line!r}: no such subcommand {bare[0]!r}"
        named.setdefault(command, set()).update(OPTION.findall(line))
    return named


def test_the_command_line_block_lists_every_subcommand_and_option() -> None:
    named = _synopsis()
    sub_action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(named) - {""} == set(SUBCOMMANDS), "subcommands missing from the Command line block"
    assert named.get("", set()) >= GLOBAL_OPTIONS, "davit --version / -v missing from the block"
    for command, parser in sub_action.choices.items():
        known = {s for spellings in _option_strings(parser) for s in spellings}
        assert named[command] <= known | GLOBAL_OPTIONS, f"davit {command}: no such options " \
                                                         f"{sorted(named[command] - known)}"
        missing = [spellings[-1] for spellings in _option_strings(parser)
                   if not set(spellings) & named[command]]
        assert not missing, f"the Command line block's davit {command} line lacks {missing}"


def test_the_blocks_are_found() -> None:
    headings = {heading for heading, _ in bash_blocks()}
    assert SYNOPSIS_HEADING in headings and len(runnable_lines()) > 10
    assert any(Path(line.split()[1]).name == "prepare_digits.py" for line in runnable_lines()
               if line.startswith("python tools/"))
