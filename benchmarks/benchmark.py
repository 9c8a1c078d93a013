"""Time this library's DaViT against timm's: ``python benchmarks/benchmark.py --help``.

The same as ``davit benchmark``; see docs/performance.md for the measured tables.
"""
import sys

from davit.benchmark import main

if __name__ == "__main__":
    sys.exit(main(prog="benchmarks/benchmark.py"))
