"""The documentation site's examples run: every ```python block of docs/*.md, in a fresh process from
the repository root, offline."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.paths import REPO

PAGES = sorted((REPO / "docs").rglob("*.md"))
EXAMPLES = [(page, block) for page in PAGES
            for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)]


def test_the_site_has_examples():
    assert {page.name for page, _ in EXAMPLES} >= {"index.md", "records.md"}


@pytest.mark.parametrize(("page", "code"), EXAMPLES, ids=[f"{p.relative_to(REPO)}-{i}" for i, (p, _) in
                                                          enumerate(EXAMPLES)])
def test_a_docs_example_runs(page, code):
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, f"{page}: {done.stderr[-2000:]}"
