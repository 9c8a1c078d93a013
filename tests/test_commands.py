"""The documentation's command lines run as written: every ``davit ...`` and ``python tools/...``
line of the ```bash blocks of README.md, CONTRIBUTING.md and docs/ parses with the current parsers
(nothing is run), the repository files they name exist and their ``--cfg-options`` fit the config;
and the generated command-line reference covers every subcommand and option."""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex

import pytest

from davit.cli.app import SUBCOMMANDS, build_parser
from davit.config import load_config
from tests.paths import REPO

PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]
# Config placeholders that stand for a file a run writes, and the repository file it is a copy of.
PLACEHOLDERS = {
    "work_dirs/davit-tiny_finetune_custom/davit-tiny_finetune_custom.py":
        "configs/davit/davit-tiny_finetune_custom.py",
}
GLOBAL_OPTIONS = {"-v", "--verbose", "--version"}


def command_lines(block: str) -> list[str]:
    """The block's commands, with ``\\``-continued lines joined (comment lines aside)."""
    lines = (line.strip() for line in block.replace("\\\n", " ").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def documented_lines() -> list[tuple[str, str]]:
    """``(page, line)`` for every command line of every ```bash block."""
    found = []
    for page in PAGES:
        for block in re.findall(r"^```bash\n(.*?)^```$", page.read_text(encoding="utf-8"), flags=re.M | re.S):
            found += [(str(page.relative_to(REPO)), line) for line in command_lines(block)]
    return found


def parser_and_argv(tokens: list[str]) -> tuple[argparse.ArgumentParser, list[str]] | None:
    """The parser a command line goes to and its arguments (None for other programs)."""
    if tokens[0] == "torchrun" and "-m" in tokens:  # torchrun's options, then -m davit ...
        tokens = tokens[tokens.index("-m") + 1:]
    elif tokens[0] == "torchrun":  # torchrun's options, then the script
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


LINES = documented_lines()


@pytest.mark.parametrize(("page", "line"), LINES, ids=[f"{page}:{line[:60]}" for page, line in LINES])
def test_a_documented_command_parses(page: str, line: str) -> None:
    tokens = shlex.split(line, comments=True)
    for token in tokens:
        if token.startswith(("configs/", "demo/", "tools/", "benchmarks/")):
            assert (REPO / token).exists(), f"{page}: {token} in {line!r} does not exist"
    target = parser_and_argv(tokens)
    if target is None:
        return  # make, pip, benchmarks/: not a davit command line
    parser, argv = target
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{page}: {line!r} does not parse: {stderr.getvalue().strip()}")
    config = getattr(args, "config", None)
    if config is not None:
        path = REPO / PLACEHOLDERS.get(config, config)
        assert path.is_file(), f"{page}: {config} in {line!r} is not a config of the repository"
        load_config(path, args.cfg_options)  # every --cfg-options key exists


def test_the_documentation_shows_every_subcommand_at_work() -> None:
    shown = {shlex.split(line)[1] for _, line in LINES if line.startswith("davit ") and len(line.split()) > 1}
    shown |= {"test", "train"}  # shown as tools/test.py and tools/train.py
    assert set(SUBCOMMANDS) <= shown, f"no example of davit {sorted(set(SUBCOMMANDS) - shown)}"
    assert any("prepare_digits.py" in line for _, line in LINES)


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_is_generated_with_every_subcommand_and_option() -> None:
    page = (REPO / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    assert "<!-- generated: cli -->" in page
    reference = _hooks().expand(page)
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == set(SUBCOMMANDS)
    for name, parser in commands.choices.items():
        assert f"## davit {name}\n" in reference
        section = reference.split(f"## davit {name}\n", 1)[1].split("\n## davit ", 1)[0]
        for action in parser._actions:
            if action.help != argparse.SUPPRESS and action.option_strings:
                assert action.option_strings[-1] in section, f"davit {name} {action.option_strings[-1]}"


def test_the_zoo_page_is_generated_from_the_zoo() -> None:
    from davit.zoo import MODELS

    page = _hooks().expand((REPO / "docs" / "reference" / "zoo.md").read_text(encoding="utf-8"))
    for name in MODELS:
        assert f"| `{name}` |" in page
    tiny = "| `davit-tiny_3rdparty_in1k` | tiny | 1000 | 28,360,168 | 4.54 G | 82.694 / 96.264 | 82.24 / 96.13 |"
    assert tiny in page
