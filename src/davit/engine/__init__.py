"""The workflows behind tools/*.py (evaluation: tools/test.py) and their multi-process helpers."""
