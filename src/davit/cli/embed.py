"""``davit embed``: write image embeddings and their paths to a file (:mod:`davit.engine.embed`)."""
from __future__ import annotations

import argparse
import sys

from ..dtypes import DTYPES
from ..engine.distributed import is_main_process
from ..engine.embed import DEFAULT_MODEL, EmbedOptions, embed_files
from ..engine.embed_shards import SHARD_FORMATS
from ..engine.ray import embed_on_ray
from .app import print_error
from .argtypes import add_checkpoint, add_engine, add_random_weights, non_negative_int, positive_int, weights_seed

DESCRIPTION = """Embed images: one vector per image (the pooled image token of a Florence-2
encoder; for a classifier, the pooled and normalised features before its head, i.e.
extract_feat(x, stage="pre_logits")), or with --tokens every image token of a Florence-2 projector.
The output records the image paths in input order: .npy writes them to NAME.paths.txt beside it,
.npz holds arrays 'embeddings' and 'paths', .safetensors holds tensor 'embeddings' and metadata
'paths' (JSON). Unreadable images are reported and left out (exit status 1).

A folder as --out (FOLDER/, or a name without a suffix) gets sharded output: parts of --shard-size
images in parquet (columns key, embedding; pandas.read_parquet(FOLDER) reads them all) or .npy
with .keys.txt, and _manifest.json. Under torchrun every process embeds its share and writes its own
parts; --resume embeds only the images the folder does not hold yet, so an interrupted run carries
on and each image is written once."""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("embed", help="write image embeddings to .npy/.npz/.safetensors",
                                   description=DESCRIPTION)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (searched recursively) or quoted patterns "
                             "such as 'photos/**/*.jpg'")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="zoo name, checkpoint, folder or hf-hub: name (default: "
                             f"{DEFAULT_MODEL})")
    add_checkpoint(parser)
    add_random_weights(parser, "the embeddings then show the pipeline, not a trained model's features")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="output .npy (paths in FILE.paths.txt), .npz or .safetensors; or a folder "
                             "(FOLDER/) for sharded, resumable parts")
    parser.add_argument("--shard-format", choices=SHARD_FORMATS, default="parquet",
                        help="a folder's parts: parquet (key, embedding columns) or npy (+ .keys.txt) "
                             "(default: parquet)")
    parser.add_argument("--shard-size", type=positive_int, default=10_000,
                        help="images per part of a folder output (default: 10000)")
    parser.add_argument("--resume", action="store_true",
                        help="add to the folder's parts: embed only the images it does not hold yet")
    parser.add_argument("--tokens", action="store_true",
                        help="every image token, (N, T, D), instead of one pooled vector, (N, D) "
                             "(Florence-2 models with a projector)")
    parser.add_argument("--batch-size", type=positive_int, default=16,
                        help="images per batch (default: 16)")
    parser.add_argument("--num-workers", type=non_negative_int, default=2,
                        help="image decoding processes; 0 decodes in the main one (default: 2)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32",
                        help="fp32, or autocast in bf16 or fp16 (fp16 needs CUDA) (default: fp32)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    add_engine(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    options = EmbedOptions(inputs=tuple(args.inputs), out=args.out, model=args.model,
                           checkpoint=args.checkpoint, tokens=args.tokens,
                           batch_size=args.batch_size, num_workers=args.num_workers,
                           dtype=args.dtype, device=args.device, random_weights=args.random_weights,
                           shard_format=args.shard_format, shard_size=args.shard_size, resume=args.resume)
    if args.engine == "ray":
        result = embed_on_ray(options, args.seed, args.ray_address, args.concurrency, args.num_gpus)
    else:
        with weights_seed(args.seed):
            result = embed_files(options)
    for message in result.failures:
        print_error(args.prog, message, kind="warning")
    if result.sharded is not None:
        run = result.sharded
        if is_main_process():
            print(f"{args.prog}: {run.written} embedding(s) of shape {run.shape} written to {args.out} "
                  f"({run.skipped} of {run.total} there already) in {run.seconds:.1f} s, "
                  f"{run.images_per_second:.1f} images/s", file=sys.stderr)
        return 1 if run.failures else 0
    print(f"{args.prog}: {len(result.sources)} embedding(s) of shape {result.array.shape[1:]} "
          f"written to {args.out}", file=sys.stderr)
    return 1 if result.failures else 0
