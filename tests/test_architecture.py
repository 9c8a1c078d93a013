"""The architecture page draws the import layers that CI enforces, and the package facade is lazy."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

import davit
from tests.paths import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_the_architecture_page_lists_the_enforced_layers():
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    page = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    drawn = re.search(r"```text\n(davit\.cli\n.*?)```", page, re.S).group(1).splitlines()
    assert drawn == contract["layers"]


def test_every_top_level_module_is_in_a_layer():
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    layered = {name.strip() for layer in contract["layers"] for name in layer.split("|")}
    package = REPO / "src" / "davit"
    modules = {f"davit.{p.stem}" for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")}
    modules |= {f"davit.{p.parent.name}" for p in package.glob("*/__init__.py")}
    assert modules == layered


def test_importing_the_model_loads_the_model_only():
    code = ("import sys, davit.model; print(sorted(m for m in sys.modules if m.startswith('davit')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "davit.checkpoint" not in loaded and "davit.engine" not in loaded and "davit.data" not in loaded
    assert "davit.model.blocks" in loaded


def test_the_facade_names_resolve_to_their_homes():
    import importlib

    for name, home in davit._EXPORTS.items():
        assert getattr(davit, name) is getattr(importlib.import_module(home), name)
    assert sorted(davit.__all__) == sorted([*davit._EXPORTS, "__version__"]) == sorted(dir(davit))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        davit.nothing  # noqa: B018
