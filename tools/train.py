"""Train or fine-tune DaViT from a config: ``python tools/train.py CONFIG [options]``.

The same as ``davit train``; see ``python tools/train.py --help``. Several processes:
``torchrun --nproc_per_node N tools/train.py CONFIG``.
"""
import sys

from davit.engine.train import main

if __name__ == "__main__":
    sys.exit(main())
