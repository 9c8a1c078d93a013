"""``davit index``: build an image-search index from embeddings (:class:`davit.search.ImageIndex`)."""
from __future__ import annotations

import argparse
import sys

from ..search import INDEX_KINDS, ImageIndex, read_embedding_set
from ..vis.maps import MAP_METHODS, save_embedding_map
from .argtypes import positive_int

DESCRIPTION = """Build a FAISS index over the pooled embeddings davit embed wrote (a .npy/.npz/
.safetensors file or a folder of parts), for davit search. Scores are cosine similarities. --kind
flat (default) searches exactly; ivf and hnsw answer large sets faster, approximately. --map also
draws the set's 2-D map (PCA, or UMAP with umap-learn installed)."""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("index", help="build an image-search index from embeddings",
                                   description=DESCRIPTION)
    parser.add_argument("embeddings", metavar="EMBEDDINGS", help="what davit embed wrote: a file or a folder")
    parser.add_argument("--out", required=True, metavar="INDEX", help="the index file to write, e.g. photos.faiss "
                        "(the image names go to INDEX.json beside it)")
    parser.add_argument("--kind", choices=INDEX_KINDS, default="flat",
                        help="flat (exact), ivf (clusters) or hnsw (graph) (default: flat)")
    parser.add_argument("--nlist", type=positive_int, help="ivf: clusters (default: about 4 sqrt(N))")
    parser.add_argument("--nprobe", type=positive_int, default=8, help="ivf: clusters searched (default: 8)")
    parser.add_argument("--hnsw-m", type=positive_int, default=32, help="hnsw: links per vector (default: 32)")
    parser.add_argument("--map", metavar="PNG", help="also draw the embeddings' 2-D map into this picture")
    parser.add_argument("--map-method", choices=MAP_METHODS, default="pca",
                        help="how the map is projected (default: pca)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    index = ImageIndex.from_embeddings(args.embeddings, args.kind, nlist=args.nlist, nprobe=args.nprobe,
                                       hnsw_m=args.hnsw_m)
    index.save(args.out)
    print(f"{args.prog}: {len(index)} image(s) of {index.info['dim']} dimensions indexed ({args.kind}) "
          f"in {args.out}", file=sys.stderr)
    if args.map:
        save_embedding_map(read_embedding_set(args.embeddings)[0], args.map, args.map_method)
        print(f"{args.prog}: the map of the embeddings is in {args.map}", file=sys.stderr)
    return 0
