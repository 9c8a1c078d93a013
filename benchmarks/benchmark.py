"""Time this library's DaViT against timm's: ``python benchmarks/benchmark.py --help``.

The same as ``davit benchmark``; see benchmarks/LOG.md for the measured tables.
"""
import sys

from davit.cli import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("benchmark", prog="benchmarks/benchmark.py"))
