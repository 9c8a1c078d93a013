"""Load test of ``davit serve`` on loopback: concurrent clients send real photos for a bounded time.

    python benchmarks/load_test.py --clients 32 --duration 60 --batch-size 16

What it does, in one script:

1. builds ``--model`` (default ``tiny``) with random weights (seeded) and saves it as a
   ``save_pretrained`` folder, so that the server and this process hold the same weights;
2. times the model offline with ``davit benchmark``'s code (:func:`davit.benchmark.run`, this
   library's model alone) at the server's batch size, before and after the load, in this process;
3. starts ``davit serve FOLDER`` as a subprocess on a free loopback port;
4. runs ``--clients`` concurrent clients, each posting one photo per request (``demo/*.jpg`` by
   default) until ``--duration`` seconds or ``--max-requests`` requests have passed;
5. checks every answer against :func:`davit.inference_model` on the same file (label, score and
   top-5 within 1e-5), and reports failures, mismatches, served images/s against the offline
   figure, the p50/p99 latency, the server's mean batch size and the images/s of its model runs
   alone (from /metrics; the gap to the served figure is decoding, preprocessing and HTTP);
6. reports the server process's peak memory (VmHWM) after the load next to the peak of a fresh
   process that loads the same folder and classifies one batch of the same size offline;
7. with ``--latency-pairs N`` (one client's latency, the server's own case at batch 1), sends N
   requests one at a time, each followed by the same photo's forward pass in this process
   (preprocessed, same weights), and reports the median latency over the median offline forward:
   the two are measured side by side, so the machine's drift (on a shared 2-core machine, 20% over
   minutes) does not enter the ratio as it does in the before/after figures.

``--dtype bf16`` and ``--compile`` serve with ``davit serve --dtype bf16 --compile``, and the offline
figures and the paired forward pass then run the same way (the compiled graph for one image); the
answers are then checked by top-1 label only, since bf16 and a compiled graph round differently.

Exit status 1 when a request failed or an answer differed. The server decodes and preprocesses
each photo on the same cores as the model, which the offline figure does not include.
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import torch

from davit import get_model, inference_model
from davit.benchmark import BenchmarkOptions
from davit.benchmark import run as run_benchmark
from davit.checkpoint.pretrained import save_pretrained
from davit.data.transforms import preprocess
from davit.exported import open_backend
from davit.model import DaViTClassifier

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="architecture or zoo name (random weights)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default: 32)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default: 60)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="stop after this many requests")
    parser.add_argument("--batch-size", type=int, default=16, help="server --max-batch-size and offline batch")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="server --max-wait-ms (default: 5)")
    parser.add_argument("--images", nargs="+", default=sorted(glob.glob(str(REPO / "demo" / "*.jpg"))),
                        help="photos to send (default: demo/*.jpg)")
    parser.add_argument("--latency-pairs", type=int, default=0,
                        help="after the load, this many (request, offline forward) pairs, one at a time")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="server --dtype, and offline")
    parser.add_argument("--compile", action="store_true", help="server --compile, and the offline forward compiled")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    return parser.parse_args()


def offline_images_per_second(model: str, batch_size: int, dtype: str, compiled: bool) -> float:
    """``davit benchmark --model MODEL --batch-size B --dtype D [--compile] --no-timm``'s median images/s."""
    report = run_benchmark(BenchmarkOptions(model=model, batch_size=batch_size, dtype=dtype, compile=compiled,
                                            timm=False, repeats=10, warmup=2))
    return float(report["results"]["davit"]["images_per_second"]["median"])


_OFFLINE_PEAK = """
import sys, torch
from davit import get_model
model = get_model(sys.argv[1]).eval()
with torch.inference_mode():
    model(torch.rand(int(sys.argv[2]), 3, 224, 224))
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def peak_memory_mib(pid: int) -> float | None:
    """A process's peak resident memory (VmHWM, Linux), in MiB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(found[1]) / 1024 if found else None


def offline_peak_memory_mib(folder: Path, batch_size: int) -> float | None:
    """The peak memory of a fresh process that loads ``folder`` and classifies one batch."""
    if not Path("/proc/self/status").exists():
        return None
    done = subprocess.run([sys.executable, "-c", _OFFLINE_PEAK, str(folder), str(batch_size)],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1]) / 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(folder: Path, port: int, batch_size: int, max_wait_ms: float, log: Path,
                 options: list[str]) -> subprocess.Popen:
    """``davit serve`` in a subprocess, its log (access lines included) written to ``log``."""
    command = [sys.executable, "-m", "davit", "serve", str(folder), "--port", str(port),
               "--max-batch-size", str(batch_size), "--max-wait-ms", str(max_wait_ms), "--max-images", "1", *options]
    with log.open("w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit("the server did not start within 180 s")


def matches(result: dict, expected: dict, exact: bool = True) -> bool:
    """Whether a served result equals inference_model's for the same photo (``exact=False``: its
    top-1 label alone)."""
    top = np.argsort(-expected["pred_scores"], kind="stable")[:5]
    if not exact:
        return bool(result["pred_label"] == expected["pred_label"])
    return (result["pred_label"] == expected["pred_label"]
            and abs(result["pred_score"] - float(expected["pred_score"])) <= TOLERANCE
            and [entry["label"] for entry in result["topk"]] == top.tolist()
            and np.allclose([entry["score"] for entry in result["topk"]], expected["pred_scores"][top],
                            atol=TOLERANCE, rtol=0))


async def load(url: str, photos: list[tuple[str, bytes, dict]], clients: int, duration: float,
               max_requests: int, exact: bool = True) -> dict:
    """Run the clients; latencies of the successful requests, and the failures and mismatches."""
    latencies: list[float] = []
    failures: list[str] = []
    mismatches: list[str] = []
    sent = 0
    deadline = time.monotonic() + duration

    async def client(number: int, http: httpx.AsyncClient) -> None:
        nonlocal sent
        turn = number
        while time.monotonic() < deadline and sent < max_requests:
            sent += 1
            name, data, expected = photos[turn % len(photos)]
            turn += 1
            started = time.perf_counter()
            try:
                answer = await http.post("/v1/predict", files=[("images", (name, data, "image/jpeg"))])
            except httpx.HTTPError as error:
                failures.append(f"{name}: {type(error).__name__}: {error}")
                continue
            elapsed = time.perf_counter() - started
            if answer.status_code != 200:
                failures.append(f"{name}: HTTP {answer.status_code} {answer.text[:200]}")
                continue
            latencies.append(elapsed)
            if not matches(answer.json()["results"][0], expected, exact):
                mismatches.append(name)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(number, http) for number in range(clients)))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "failures": failures, "mismatches": mismatches, "seconds": elapsed}


def latency_pairs(url: str, model: Callable[[torch.Tensor], torch.Tensor], photo: tuple[str, bytes, dict],
                  path: str, pairs: int) -> dict[str, float]:
    """Median latency of one request at a time, against the median forward pass of the same
    preprocessed photo in this process, alternating (see the module's step 7)."""
    name, data, _ = photo
    images = preprocess([path])
    latencies, forwards = [], []
    with httpx.Client(base_url=url, timeout=60) as http:
        for _ in range(pairs):
            started = time.perf_counter()
            http.post("/v1/predict", files=[("images", (name, data, "image/jpeg"))]).raise_for_status()
            latencies.append(time.perf_counter() - started)
            started = time.perf_counter()
            with torch.inference_mode():
                model(images)
            forwards.append(time.perf_counter() - started)
    latency, forward = statistics.median(latencies), statistics.median(forwards)
    return {"pairs": pairs, "p50_latency_ms": round(1000 * latency, 1), "offline_forward_ms": round(1000 * forward, 1),
            "latency_over_offline": round(latency / forward, 3)}


def batch_totals(url: str) -> dict[str, float]:
    """The server's model runs so far, the images they took and the seconds they ran (/metrics)."""
    metrics = httpx.get(f"{url}/metrics").text
    names = {"runs": "davit_batch_size_count", "images": "davit_batch_size_sum",
             "seconds": "davit_batch_duration_seconds_sum"}
    totals = {}
    for key, name in names.items():
        found = re.search(rf"^{name} (\S+)$", metrics, re.M)
        totals[key] = float(found[1]) if found else 0.0
    return totals


def main() -> int:
    args = parse_args()
    if not args.images:
        raise SystemExit("no photos to send; pass --images")
    torch.manual_seed(0)
    model = get_model(args.model, pretrained=False)
    if not isinstance(model, DaViTClassifier):
        raise SystemExit(f"{args.model} is not a classifier; the load test posts to /v1/predict")
    offline_before = offline_images_per_second(args.model, args.batch_size, args.dtype, args.compile)
    server_options = ["--dtype", args.dtype, *(["--compile"] if args.compile else [])]
    with tempfile.TemporaryDirectory(prefix="davit-load-") as tmp:
        folder = save_pretrained(model, Path(tmp) / "model")
        expected = inference_model(model, list(args.images))
        photos = [(Path(path).name, Path(path).read_bytes(), result) for path, result in zip(args.images, expected)]
        port = free_port()
        server = start_server(folder, port, args.batch_size, args.max_wait_ms, Path(tmp) / "server.log",
                              server_options)
        url = f"http://127.0.0.1:{port}"
        try:
            for name, data, _ in photos:  # warm-up, untimed
                httpx.post(f"{url}/v1/predict", files=[("images", (name, data))], timeout=60).raise_for_status()
            before = batch_totals(url)
            outcome = asyncio.run(load(url, photos, args.clients, args.duration, args.max_requests,
                                       exact=args.dtype == "fp32" and not args.compile))
            during = {key: value - before[key] for key, value in batch_totals(url).items()}
            paired = None
            if args.latency_pairs > 0:  # the forward pass the server runs, here
                forward = open_backend(model, "torch", dtype=args.dtype, compiled=args.compile, batch_sizes=(1,))
                paired = latency_pairs(url, forward, photos[0], args.images[0], args.latency_pairs)
            server_peak = peak_memory_mib(server.pid)
            offline_peak = offline_peak_memory_mib(folder, args.batch_size)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    offline_after = offline_images_per_second(args.model, args.batch_size, args.dtype, args.compile)
    latencies = sorted(outcome["latencies"])
    served = len(latencies) / outcome["seconds"]
    offline = statistics.mean([offline_before, offline_after])
    figures = {
        "model": args.model, "clients": args.clients, "duration_s": round(outcome["seconds"], 1),
        "batch_size": args.batch_size, "max_wait_ms": args.max_wait_ms, "dtype": args.dtype,
        "compiled": args.compile, "photos": [name for name, _, _ in photos],
        "requests_ok": len(latencies), "failures": len(outcome["failures"]), "mismatches": len(outcome["mismatches"]),
        "served_images_per_s": round(served, 2),
        "offline_images_per_s": {"before": round(offline_before, 2), "after": round(offline_after, 2)},
        "served_over_offline": round(served / offline, 3),
        "latency_ms": {"p50": round(1000 * float(np.percentile(latencies, 50)), 1),
                       "p99": round(1000 * float(np.percentile(latencies, 99)), 1)} if latencies else None,
        "mean_batch_size": round(during["images"] / max(during["runs"], 1), 2),
        # the model alone inside the server (its batches' run time), to tell contention from overhead
        "server_model_images_per_s": round(during["images"] / during["seconds"], 2) if during["seconds"] else None,
        "one_at_a_time": paired,
        "peak_memory_mib": {"server": round(server_peak, 1) if server_peak else None,
                            "offline_one_batch": round(offline_peak, 1) if offline_peak else None,
                            "server_over_offline": round(server_peak / offline_peak, 2)
                            if server_peak and offline_peak else None},
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
    }
    print(json.dumps(figures, indent=2))
    for problem in outcome["failures"][:10] + [f"mismatch: {name}" for name in outcome["mismatches"][:10]]:
        print(problem, file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if outcome["failures"] or outcome["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
