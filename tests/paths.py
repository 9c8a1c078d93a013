"""Where the tests find the repository and their fixtures (tests mirror the package's layout)."""
from pathlib import Path

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures"
REPO = TESTS.parent
