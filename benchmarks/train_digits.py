"""Train a small DaViT from scratch on scikit-learn's digits through tools/train.py and report
the held-out accuracy.

``tools/prepare_digits.py`` writes the 1,797 8x8 scans of ``sklearn.datasets.load_digits``
(80/20, stratified, fixed seed, upscaled to 32x32) as PNGs in one sub-folder per class
(``train/0/...``, ``test/0/...``). ``tools/train.py configs/davit/davit-digits_1xb64.py`` then
trains on the 80% and validates on the 20% after every epoch. The last line printed is a JSON object: ``top1`` and
``top5`` (percent, the last epoch's, on the held-out 20%), ``seconds`` (wall time of the training
command, validation included), ``epochs``, ``threads`` and the command.

The training runs with one intra-op thread (``OMP_NUM_THREADS=1``) unless ``OMP_NUM_THREADS`` is
set: a model this small gains little from a second thread, and on a machine busy with other work
two threads that wait for each other at every operation make training several times slower.

    python benchmarks/train_digits.py [--work-dir DIR] [--data DIR] [-- --cfg-options ...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "davit" / "davit-digits_1xb64.py"
sys.path.insert(0, str(REPO / "tools"))
from prepare_digits import write_digits  # noqa: E402  (the images the digits config reads)


def last_validation(work_dir: Path) -> dict:
    """The last ``val`` record of the run's ``scalars.jsonl``."""
    records = [json.loads(line) for line in (work_dir / "scalars.jsonl").read_text().splitlines()]
    return [r for r in records if r["mode"] == "val"][-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, help="default: a temporary folder")
    parser.add_argument("--data", type=Path, help="where the PNGs go (default: a temporary folder)")
    parser.add_argument("train_args", nargs="*", help="more tools/train.py options, after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "digits"
        work_dir = args.work_dir or Path(tmp) / "work"
        n_train, n_test = write_digits(data)
        command = [sys.executable, str(REPO / "tools" / "train.py"), str(CONFIG),
                   "--work-dir", str(work_dir), "--device", "cpu",
                   "--cfg-options", f"train_dataloader.dataset.data_root={data / 'train'}",
                   f"val_dataloader.dataset.data_root={data / 'test'}", *args.train_args]
        print(f"{n_train} training and {n_test} held-out images in {data}", file=sys.stderr)
        print(" ".join(command), file=sys.stderr)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        started = time.perf_counter()
        subprocess.run(command, check=True, env=env)
        seconds = time.perf_counter() - started
        result = last_validation(work_dir)
    print(json.dumps({"top1": round(result["accuracy/top1"], 2),
                      "top5": round(result["accuracy/top5"], 2),
                      "seconds": round(seconds, 1), "epochs": result["epoch"],
                      "threads": int(env["OMP_NUM_THREADS"]),
                      "train_images": n_train, "test_images": n_test,
                      "command": "python benchmarks/train_digits.py"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
