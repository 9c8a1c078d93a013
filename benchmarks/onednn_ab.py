"""A/B timing of the CPU inference path's fast kernels (davit.kernels) against the plain layers.

    python benchmarks/onednn_ab.py --batch-size 16 --dtype fp32 --rounds 8

Times the same model, in one process and in interleaved rounds, three ways: with
``davit.fast_kernels(False)`` (the plain reference computation: nn.Linear with PyTorch's BLAS
products, GELU and additions apart, unfolded position encodings, whole batches), with the fast
kernels but the oneDNN linear weights passed as they are (reordered on every call), and as
shipped (weights packed once and cached). Prints the median step time and the speed-up over the
first variant.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from davit import fast_kernels, kernels
from davit.model import DaViTClassifier

VARIANTS = ("fast kernels off", "oneDNN, unpacked weights", "oneDNN, packed weights")


def _unpacked(layer: torch.nn.Linear, dtype: torch.dtype):
    return layer.weight.to(dtype), None if layer.bias is None else layer.bias.to(dtype)


def use_variant(variant: str, packed_parameters) -> None:
    fast_kernels(variant != VARIANTS[0])
    kernels.packed_parameters = _unpacked if variant == VARIANTS[1] else packed_parameters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/onednn_ab.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: bfloat16 autocast")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not kernels.has_onednn_linear():
        raise SystemExit("this PyTorch build has no oneDNN linear kernels")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DaViTClassifier(args.arch).eval()
    images = torch.randn(args.batch_size, 3, 224, 224)
    packed_parameters = kernels.packed_parameters
    seconds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    try:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16,
                                                    enabled=args.dtype == "bf16"):
            for variant in VARIANTS:  # warm-up, and the packed weights are made here
                use_variant(variant, packed_parameters)
                model(images)
            for round_index in range(args.rounds):
                order = VARIANTS if round_index % 2 else VARIANTS[::-1]
                for variant in order:
                    use_variant(variant, packed_parameters)
                    start = time.perf_counter()
                    model(images)
                    seconds[variant].append(time.perf_counter() - start)
    finally:
        use_variant(VARIANTS[2], packed_parameters)
    medians = {variant: sorted(times)[len(times) // 2] for variant, times in seconds.items()}
    print(f"DaViT-{args.arch}, batch {args.batch_size}, {args.dtype}, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds")
    for variant, median in medians.items():
        print(f"{variant:26s} {median * 1e3:8.1f} ms  {medians[VARIANTS[0]] / median:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
