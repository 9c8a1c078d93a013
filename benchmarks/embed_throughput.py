"""Embedding throughput from webdataset shards against the model's own offline throughput, in one process.

    python benchmarks/embed_throughput.py --model tiny --images 96 --batch-size 16 --threads 2

Offline: the same images, already decoded and preprocessed, as tensors in memory, through the
same embedding function: what the model alone can do. From shards: ``davit embed`` 's sharded
path (tar shards indexed, images decoded and preprocessed in DataLoader workers, parts written),
timed from the first batch to the last part. Both run twice, alternating, and the faster of each
is kept. Random weights (offline); the figures are the machine's, so name it beside them.
"""
from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from davit.checkpoint.build import get_model
from davit.engine.embed import embedding_function
from davit.engine.embed_shards import embed_to_shards
from davit.engine.infer import find_images


def write_shards(folder: Path, images: int, per_shard: int) -> str:
    import webdataset

    rng = np.random.default_rng(0)
    photos = [Image.open(p).convert("RGB") for p in sorted(Path("demo").glob("*.jpg"))]
    for shard in range(0, images, per_shard):
        with webdataset.TarWriter(str(folder / f"photos-{shard // per_shard:03d}.tar")) as writer:
            for i in range(shard, min(shard + per_shard, images)):
                photo = photos[i % len(photos)]
                box = rng.integers(0, 40, 2)
                crop = photo.crop((int(box[0]), int(box[1]), photo.width - 40 + int(box[0]),
                                   photo.height - 40 + int(box[1])))
                buffer = io.BytesIO()
                crop.save(buffer, "JPEG", quality=90)
                writer.write({"__key__": f"{i:06d}", "jpg": buffer.getvalue()})
    return f"wds:{folder}/photos-{{000..{(images - 1) // per_shard:03d}}}.tar"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = get_model(args.model, pretrained=False).eval()
    embed = embedding_function(model, pooled=True)
    root = Path(tempfile.mkdtemp())
    try:
        source = write_shards(root, args.images, 32)
        items = find_images([source]).paths
        transform = model.card.preprocessing.transform()
        batches = [torch.stack([transform(item) for item in items[i:i + args.batch_size]])
                   for i in range(0, len(items), args.batch_size)]
        offline, sharded = [], []
        for repeat in range(2):
            with torch.inference_mode():
                start = time.perf_counter()
                for batch in batches:
                    embed(batch)
                offline.append(len(items) / (time.perf_counter() - start))
            out = root / f"out{repeat}"
            run = embed_to_shards(model, embed, items, out, "parquet", 10_000, False, args.batch_size,
                                  args.num_workers, None, torch.device("cpu"), "pooled", args.model)
            sharded.append(run.written / run.seconds)
        best_offline, best_sharded = max(offline), max(sharded)
        print(f"DaViT-{args.model}, {args.images} images, batch {args.batch_size}, {args.threads} threads, "
              f"{args.num_workers} decoding workers")
        print(f"offline (tensors in memory): {best_offline:.1f} img/s")
        print(f"from webdataset shards (decode in workers, parquet parts): {best_sharded:.1f} img/s "
              f"({best_sharded / best_offline:.2f}x offline)")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
