"""Run the standard rows of `davit benchmark` and print the table of benchmarks/LOG.md.

    python benchmarks/table.py                     # every row (about 5 minutes on 2 cores)
    python benchmarks/table.py --runs 3            # every row three times, medians and ranges
    python benchmarks/table.py --rows fp32-b16 bf16-b16 --out results/
    python benchmarks/table.py --from benchmarks/results/2026-11-25-cpu   # reprint saved runs

Each row runs in a fresh process (`python -m davit benchmark ... --json`), so that one row's
allocations and compiled graphs do not affect the next; with --runs N all rows run once, then
again, N times. Images/s are medians over the runs of each run's median, the ratio is given as
the median over the runs with its range. The JSON files are kept in --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
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
    parser.add_argument("--runs", type=int, default=1, help="run every row this many times")
    parser.add_argument("--out", type=Path, help="keep each row's JSON here (default: a temp dir)")
    parser.add_argument("--from", dest="saved", type=Path, metavar="DIR",
                        help="print the table of the JSON files in DIR instead of running")
    return parser.parse_args(argv)


def run_row(key: str, args: argparse.Namespace, json_path: Path) -> dict:
    command = [sys.executable, "-m", "davit", "benchmark", "--model", args.model,
               "--threads", args.threads, *ROWS[key][1], "--json", str(json_path)]
    print("$", " ".join(command[1:]), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(json_path.read_text())


def table_row(label: str, reports: list[dict]) -> str:
    """One markdown row from the reports of one case over the runs."""
    def median_of(name: str, field: str) -> float:
        return statistics.median(r["results"][name][field] for r in reports)

    def speed(name: str) -> str:
        return f"{statistics.median(r['results'][name]['images_per_second']['median'] for r in reports):.2f}"

    def memory(name: str) -> str:
        return f"{median_of(name, 'peak_memory_bytes') / 2**20:.0f}"

    if "timm" not in reports[0]["results"]:
        return (f"| {label} | {speed('davit')} | - | - | {memory('davit')} | "
                f"{median_of('davit', 'share_of_ceiling'):.0%} |")
    ratios = [r["speedup_vs_timm"] for r in reports]
    ratio = f"**{statistics.median(ratios):.2f}x**"
    if len(ratios) > 1:
        ratio += f" ({min(ratios):.2f}-{max(ratios):.2f})"
    return (f"| {label} | {speed('davit')} | {speed('timm')} | {ratio} | {memory('davit')} / "
            f"{memory('timm')} | {median_of('davit', 'share_of_ceiling'):.0%} / "
            f"{median_of('timm', 'share_of_ceiling'):.0%} |")


def print_table(reports: dict[str, list[dict]]) -> None:
    runs = len(next(iter(reports.values())))
    ratio = "davit / timm" + (f" (range over {runs} runs)" if runs > 1 else "")
    print(f"| case | davit images/s | timm images/s | {ratio} | peak MiB (davit / timm) | "
          "share of matmul ceiling (davit / timm) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for key, row_reports in reports.items():
        print(table_row(ROWS[key][0], row_reports))


def load_saved(folder: Path, rows: list[str]) -> dict[str, list[dict]]:
    """The reports of ``<row>.json`` or ``<row>-run<N>.json`` files in ``folder``."""
    reports = {}
    for key in rows:
        paths = sorted(folder.glob(f"{key}-run*.json")) or sorted(folder.glob(f"{key}.json"))
        if paths:
            reports[key] = [json.loads(path.read_text()) for path in paths]
    if not reports:
        raise SystemExit(f"no benchmark JSON files for rows {rows} in {folder}")
    return reports


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.saved is not None:
        print_table(load_saved(args.saved, args.rows))
        return 0
    reports: dict[str, list[dict]] = {key: [] for key in args.rows}
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        for run in range(args.runs):
            suffix = f"-run{run + 1}" if args.runs > 1 else ""
            for key in args.rows:
                reports[key].append(run_row(key, args, out / f"{key}{suffix}.json"))
    print_table(reports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
