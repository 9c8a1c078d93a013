"""Run the standard rows of `davit benchmark` and print the table of docs/performance.md.

    python benchmarks/table.py                     # every row (about 15 minutes on 2 cores)
    python benchmarks/table.py --rows fp32-b16 bf16-b16 --out results/

Each row runs in a fresh process (`python -m davit benchmark ... --json`), so that one row's
allocations and compiled graphs do not affect the next. The JSON files are kept in --out.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

INFERENCE = ["--repeats", "10", "--warmup", "2"]
LATENCY = ["--repeats", "30", "--warmup", "3"]
TRAIN = ["--mode", "train", "--repeats", "5", "--warmup", "2"]
ROWS: dict[str, tuple[str, list[str]]] = {
    "fp32-b16": ("fp32 inference, batch 16", ["--batch-size", "16", "--dtype", "fp32", *INFERENCE]),
    "bf16-b16": ("bf16 autocast inference, batch 16",
                 ["--batch-size", "16", "--dtype", "bf16", *INFERENCE]),
    "pure-bf16-b16": ("pure bf16 inference, batch 16",
                      ["--batch-size", "16", "--dtype", "pure-bf16", *INFERENCE]),
    "fp32-b1": ("fp32 inference, batch 1", ["--batch-size", "1", "--dtype", "fp32", *LATENCY]),
    "bf16-b1": ("bf16 autocast inference, batch 1",
                ["--batch-size", "1", "--dtype", "bf16", *LATENCY]),
    "train-fp32": ("training step fp32, batch 16", ["--batch-size", "16", "--dtype", "fp32", *TRAIN]),
    "train-bf16": ("training step bf16 autocast, batch 16",
                   ["--batch-size", "16", "--dtype", "bf16", *TRAIN]),
    "bf16-b16-compiled": ("bf16 autocast inference, batch 16, both compiled",
                          ["--batch-size", "16", "--dtype", "bf16", "--compile",
                           "--repeats", "10", "--warmup", "3"]),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/table.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--out", type=Path, help="keep each row's JSON here (default: a temp dir)")
    return parser.parse_args(argv)


def run_row(key: str, args: argparse.Namespace, out: Path) -> dict:
    json_path = out / f"{key}.json"
    command = [sys.executable, "-m", "davit", "benchmark", "--model", args.model,
               "--threads", args.threads, *ROWS[key][1], "--json", str(json_path)]
    print("$", " ".join(command[1:]), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(json_path.read_text())


def table_row(label: str, report: dict) -> str:
    ours, timm = report["results"]["davit"], report["results"].get("timm")

    def speed(result: dict) -> str:
        ips = result["images_per_second"]
        return f"{ips['median']:.2f} ({ips['min']:.2f}-{ips['max']:.2f})"

    def memory(result: dict) -> str:
        return f"{result['peak_memory_bytes'] / 2**20:.0f}"

    if timm is None:
        return f"| {label} | {speed(ours)} | - | - | {memory(ours)} | - | {ours['share_of_ceiling']:.0%} |"
    return (f"| {label} | {speed(ours)} | {speed(timm)} | **{report['speedup_vs_timm']:.2f}x** | "
            f"{memory(ours)} | {memory(timm)} | {ours['share_of_ceiling']:.0%} / "
            f"{timm['share_of_ceiling']:.0%} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        reports = {key: run_row(key, args, out) for key in args.rows}
    print("| case | davit images/s (min-max) | timm images/s (min-max) | davit / timm | "
          "davit peak MiB | timm peak MiB | share of matmul ceiling (davit / timm) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key, report in reports.items():
        print(table_row(ROWS[key][0], report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
