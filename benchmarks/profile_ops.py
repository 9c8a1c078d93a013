"""Where the time goes: per-operator CPU time of this library's DaViT and timm's, side by side.

    python benchmarks/profile_ops.py --dtype fp32 --batch-size 16
    python benchmarks/profile_ops.py --dtype bf16 --mode train

Both models get the same weights and input. Each is profiled with ``torch.profiler`` over
--repeats steps after warm-up; the step with the smallest total is reported, with operators
grouped by what they do (self CPU time, so nothing is counted twice).
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch.profiler import profile

from davit.benchmark import timm_reference
from davit.model import DaViTClassifier
from davit.timing import _without_profiler_chatter

GROUPS = (  # (label, substrings of operator names), first match wins
    ("matrix products of linear layers", ("linear_pointwise", "aten::addmm", "aten::mm")),
    ("window attention (SDPA)", ("scaled_dot_product",)),
    ("channel attention products and softmax", ("aten::bmm", "softmax")),
    ("convolutions", ("convolution",)),
    ("LayerNorm", ("layer_norm",)),
    ("GELU", ("gelu",)),
    ("copies (layout changes, casts, concatenation)", ("copy_", "aten::cat", "clone")),
    ("optimizer (AdamW)", ("_foreach", "adam")),
    ("elementwise and reductions", ("aten::add", "aten::mul", "aten::sum", "aten::div",
                                    "fill_", "zero_", "aten::where")),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/profile_ops.py", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", choices=("fp32", "bf16", "pure-bf16"), default="fp32")
    parser.add_argument("--mode", choices=("inference", "train"), default="inference")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def group_of(name: str) -> str:
    for label, keys in GROUPS:
        if any(key in name for key in keys):
            return label
    return "other"


def profile_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 args: argparse.Namespace) -> dict[str, float]:
    """Milliseconds per operator group for the fastest of ``args.repeats`` profiled steps."""
    autocast = args.dtype == "bf16"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if args.mode == "train" else None

    def step() -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            if optimizer is None:
                with torch.inference_mode():
                    model(images)
                return
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train(args.mode == "train")
    for _ in range(2):
        step()
    best: dict[str, float] | None = None
    for _ in range(args.repeats):
        with _without_profiler_chatter(), profile() as prof:
            step()
        groups: dict[str, float] = {}
        for event in prof.key_averages():
            label = group_of(event.key)
            groups[label] = groups.get(label, 0.0) + event.self_cpu_time_total / 1e3
        if best is None or sum(groups.values()) < sum(best.values()):
            best = groups
    return best


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = DaViTClassifier(args.arch, num_classes=1000)
    reference = timm_reference(ours.backbone.arch, 1000, ours.state_dict())
    if reference is None:
        raise SystemExit("benchmarks/profile_ops.py compares with timm's DaViT: pip install timm")
    images = torch.randn(args.batch_size, 3, 224, 224)
    labels = torch.randint(0, 1000, (args.batch_size,))
    if args.dtype == "pure-bf16":
        ours, reference, images = ours.bfloat16(), reference.bfloat16(), images.bfloat16()
    results = {"davit": profile_step(ours, images, labels, args),
               "timm": profile_step(reference, images, labels, args)}
    totals = {name: sum(groups.values()) for name, groups in results.items()}
    print(f"DaViT-{args.arch}, batch {args.batch_size}, 224x224, {args.dtype}, {args.mode}, "
          f"{args.threads} threads: CPU time of one step by operator group (self time)\n")
    print("| operators | davit ms | share | timm ms | share |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label in [g[0] for g in GROUPS] + ["other"]:
        row = [results[name].get(label, 0.0) for name in ("davit", "timm")]
        if any(row):
            print(f"| {label} | {row[0]:.0f} | {row[0] / totals['davit']:.0%} | {row[1]:.0f} | "
                  f"{row[1] / totals['timm']:.0%} |")
    print(f"| total | {totals['davit']:.0f} | | {totals['timm']:.0f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
