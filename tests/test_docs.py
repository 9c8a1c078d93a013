"""The documentation's examples run: every ```python block of README.md, CONTRIBUTING.md and docs/,
in a fresh process from the repository root, offline. A block that needs downloaded weights says so
on its first line (``# needs downloads: REASON``) and is skipped with that reason."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.paths import REPO

pytestmark = pytest.mark.slow  # every example in a process of its own

PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]
EXAMPLES = [(page, block) for page in PAGES
            for block in re.findall(r"^```python\n(.*?)^```$", page.read_text(encoding="utf-8"), re.S | re.M)]
NEEDS_DOWNLOADS = re.compile(r"# needs downloads: (\S.*)")


def test_the_site_has_examples_and_most_run_offline():
    assert {page.name for page, _ in EXAMPLES} >= {"README.md", "index.md", "records.md", "florence2.md", "timm.md"}
    offline = [code for _, code in EXAMPLES if not NEEDS_DOWNLOADS.match(code)]
    assert len(offline) >= len(EXAMPLES) - len(offline)  # most examples show the path offline


@pytest.mark.parametrize(("page", "code"), EXAMPLES, ids=[f"{p.relative_to(REPO)}-{i}" for i, (p, _) in
                                                          enumerate(EXAMPLES)])
def test_a_docs_example_runs(page, code):
    needs = NEEDS_DOWNLOADS.match(code)
    if needs:
        pytest.skip(f"{page.relative_to(REPO)}: needs downloads: {needs.group(1)}")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, f"{page}: {done.stderr[-2000:]}"
