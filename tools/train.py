"""Train or fine-tune DaViT from a config: ``python tools/train.py CONFIG [options]``.

The same as ``davit train``; see ``python tools/train.py --help``. Several processes:
``torchrun --nproc_per_node N tools/train.py CONFIG``.
"""
import sys

from davit.cli.app import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("train", prog="tools/train.py"))
