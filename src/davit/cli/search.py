"""``davit search``: the nearest images of query images in an index ``davit index`` built."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..checkpoint.build import get_model
from ..dtypes import DTYPES
from ..engine.infer import expand_inputs
from ..errors import InvalidArgumentError
from ..search import ImageIndex, neighbours_picture
from ..vis.drawing import picture_stem
from .argtypes import add_checkpoint, add_random_weights, positive_int, weights_seed

DESCRIPTION = """Find the images of an index (davit index) nearest to each query image: the query
is embedded with the model that embedded the set (recorded in the index; --model to name it), and
the k best are printed with their cosine similarity, one line each. --json writes them all;
--show-dir saves a picture of each query beside its neighbours."""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("search", help="find the images of an index nearest to query images",
                                   description=DESCRIPTION)
    parser.add_argument("index", metavar="INDEX", help="an index davit index wrote (.faiss)")
    parser.add_argument("queries", nargs="+", metavar="QUERY",
                        help="query images: files, folders, patterns, wds: or hf: sources")
    parser.add_argument("-k", "--topk", type=positive_int, default=5, help="neighbours per query (default: 5)")
    parser.add_argument("--model", help="the model that embedded the set (default: the one the index records)")
    add_checkpoint(parser)
    add_random_weights(parser, "only for an index of embeddings made with the same random weights")
    parser.add_argument("--nprobe", type=positive_int, help="ivf indexes: clusters searched")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="query images per batch (default: 16)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="fp32, or autocast in bf16 or fp16")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--json", metavar="FILE", help="write every query's neighbours to this JSON file")
    parser.add_argument("--show-dir", metavar="FOLDER", help="save each query beside its neighbours as a PNG here")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    index = ImageIndex.load(args.index, args.nprobe)
    queries = expand_inputs(args.queries)
    name = args.model or index.info.get("model")
    if not name:
        raise InvalidArgumentError(f"{args.index} does not record the model that embedded its images; "
                                   "pass --model (and --checkpoint) as given to davit embed")
    pretrained: bool | str = False if args.random_weights else args.checkpoint or True
    with weights_seed(args.seed):
        model = get_model(name, pretrained=pretrained, device=args.device)
    answers = index.search_images(model, queries, args.topk, batch_size=args.batch_size, dtype=args.dtype,
                                  device=args.device)
    results: list[dict[str, Any]] = [
        {"query": str(query), "neighbours": [{"rank": n.rank, "name": n.name, "score": n.score} for n in neighbours]}
        for query, neighbours in zip(queries, answers)]
    for result in results:
        print(result["query"])
        for n in result["neighbours"]:
            print(f"  {n['rank']}. {n['score']:.4f}  {n['name']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.show_dir:
        folder = Path(args.show_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for number, (query, neighbours) in enumerate(zip(queries, answers)):
            neighbours_picture(query, neighbours).save(folder / f"{number:04d}_{picture_stem(query)}.png")
        print(f"{args.prog}: {len(queries)} picture(s) of the queries and their neighbours in {folder}",
              file=sys.stderr)
    return 0
