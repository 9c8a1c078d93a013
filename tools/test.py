"""Evaluate a DaViT checkpoint on a dataset: ``python tools/test.py CONFIG CHECKPOINT [options]``.

The same as ``davit test``; see ``python tools/test.py --help``.
"""
import sys

from davit.cli.app import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("test", prog="tools/test.py"))
