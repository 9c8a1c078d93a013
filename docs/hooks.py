"""MkDocs hooks: the pages that are generated, not hand-kept.

A page holds a marker comment where generated text goes:

* ``<!-- generated: cli -->``: every ``davit`` subcommand's ``--help``, from the parsers themselves;
* ``<!-- generated: zoo -->``: the model zoo table, from ``davit.zoo.MODELS``;
* ``<!-- include: FILE -->``: a file of the repository (CONTRIBUTING.md), so that it has one text.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- (generated|include): (\S+) -->")
HELP_WIDTH = "100"


def cli_reference() -> str:
    """One section per subcommand: its description and its ``--help``, as the parser prints it."""
    from davit.cli.app import build_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH  # argparse wraps to the terminal; the page has a fixed width
    try:
        parser = build_parser()
        sections = ["## davit", "", "```text", parser.format_help().rstrip(), "```", ""]
        commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
        for name, sub in commands.choices.items():
            sections += [f"## davit {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    finally:  # the test suite calls this too: leave its terminal width as it was
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(sections)


def zoo_table() -> str:
    """The named models: architecture, classes, parameters, FLOPs, published accuracy, weights."""
    import torch

    from davit.flops import count_flops
    from davit.model import build_model
    from davit.zoo import MODELS

    rows = ["| name | architecture | classes | parameters | FLOPs (multiply-adds, 224 x 224) | "
            "top-1 / top-5 official | top-1 / top-5 mmpretrain | weights |",
            "| --- | --- | ---: | ---: | ---: | --- | --- | --- |"]
    for info in MODELS.values():
        with torch.device("meta"):
            model = build_model(info.arch, info.num_classes)
        counts = count_flops(model)
        metrics = info.metrics or {}

        def accuracy(semantics: str, metrics: dict = metrics) -> str:
            found = metrics.get(semantics)
            return f"{found['top1']} / {found['top5']}" if found else ""

        weights = f"`{info.weights}`" if info.weights else "none (architecture)"
        rows.append(f"| `{info.name}` | {info.arch} | {info.num_classes} | {counts['params']:,} | "
                    f"{counts['flops'] / 1e9:.2f} G | {accuracy('official')} | {accuracy('mmpretrain')} | {weights} |")
    return "\n".join(rows) + "\n"


GENERATORS = {"cli": cli_reference, "zoo": zoo_table}


def expand(markdown: str) -> str:
    """``markdown`` with every marker replaced by what it names."""
    def replace(match: re.Match[str]) -> str:
        kind, name = match.groups()
        if kind == "include":
            return (REPO / name).read_text(encoding="utf-8")
        return GENERATORS[name]()

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return expand(markdown)
