"""Image search over embeddings: :class:`ImageIndex` (``davit index`` builds one, ``davit search`` asks it).

An index holds unit-length embeddings in FAISS, so its scores are cosine similarities (inner
products of normalised vectors): ``flat`` searches exactly (the default), ``ivf`` (an inverted file
of ``nlist`` clusters, ``nprobe`` of them searched) and ``hnsw`` (a graph of ``M`` links per vector)
answer large sets faster, approximately. It is saved as ``NAME.faiss`` with ``NAME.faiss.json``
beside it: the image names in index order and what made them (the model, the embedding kind).

Queries are images (embedded with the same model as the set, which the index records) or vectors.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .checkpoint.io import replacing
from .data.images import ImageSource, load_image
from .data.sources import image_by_name
from .engine.embed import embed_images, load_embeddings
from .engine.embed_shards import MANIFEST, read_embedding_shards
from .engine.infer import expand_inputs
from .errors import ImageLoadError, InvalidArgumentError
from .vis.drawing import fit, with_caption

INDEX_KINDS = ("flat", "ivf", "hnsw")
_TEXT = (20, 20, 20)


@dataclass(frozen=True)
class Neighbour:
    """One answer to a query: the image's name, its cosine similarity and its rank (1 first)."""

    name: str
    score: float
    rank: int


def _faiss() -> Any:
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which CPU build it picked: not news
    try:
        import faiss
    except ImportError:
        raise InvalidArgumentError("image search needs FAISS: pip install 'davit-toolkit[search]'") from None
    return faiss


def read_embedding_set(path: str | Path) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Embeddings, their image names and what made them, from a file ``davit embed`` wrote (.npy,
    .npz, .safetensors) or a folder of parts."""
    path = Path(path)
    if path.is_dir():
        array, names = read_embedding_shards(path)
        manifest = path / MANIFEST
        info = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
        return array, names, {k: info[k] for k in ("model", "kind") if k in info}
    if not path.is_file():
        raise InvalidArgumentError(f"{path} does not exist; give embeddings davit embed wrote (a file or a folder)")
    array, names = load_embeddings(path)
    return array, names, {}


class ImageIndex:
    """Nearest images by cosine similarity over a set of embeddings (see the module's docstring)."""

    def __init__(self, index: Any, names: Sequence[str], info: dict[str, Any] | None = None) -> None:
        if index.ntotal != len(names):
            raise InvalidArgumentError(f"the index holds {index.ntotal} vectors but {len(names)} names")
        self.index = index
        self.names = list(names)
        self.info = dict(info or {})

    @classmethod
    def build(cls, embeddings: np.ndarray, names: Sequence[str], kind: str = "flat", nlist: int | None = None,
              nprobe: int = 8, hnsw_m: int = 32, info: dict[str, Any] | None = None) -> ImageIndex:
        """An index of (N, D) ``embeddings`` named ``names`` (pooled embeddings: one per image)."""
        faiss = _faiss()
        vectors = _unit_rows(embeddings)
        if len(vectors) != len(names):
            raise InvalidArgumentError(f"{len(vectors)} embeddings but {len(names)} names")
        if len(vectors) == 0:
            raise InvalidArgumentError("there are no embeddings to index")
        dim = vectors.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            lists = nlist or max(1, min(int(4 * np.sqrt(len(vectors))), len(vectors) // 39 or 1))
            if lists > len(vectors):
                raise InvalidArgumentError(f"nlist {lists} is more clusters than the {len(vectors)} embeddings; "
                                           "lower --nlist or use --kind flat")
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
            index.nprobe = min(nprobe, lists)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            raise InvalidArgumentError(f"index kind {kind!r}: use one of {list(INDEX_KINDS)}")
        index.add(vectors)
        return cls(index, names, {**(info or {}), "index_kind": kind, "dim": dim})

    @classmethod
    def from_embeddings(cls, path: str | Path, kind: str = "flat", **options: Any) -> ImageIndex:
        """An index of the embeddings ``davit embed`` wrote at ``path`` (a file or a folder of parts)."""
        array, names, info = read_embedding_set(path)
        if info.get("kind") == "tokens" or array.ndim != 2:
            raise InvalidArgumentError(f"{path} holds token embeddings {array.shape[1:]}; index pooled "
                                       "embeddings (davit embed without --tokens)")
        return cls.build(array, names, kind, info=info, **options)

    @classmethod
    def from_images(cls, model: Any, inputs: Sequence[str], kind: str = "flat", batch_size: int = 16,
                    num_workers: int = 0, **options: Any) -> ImageIndex:
        """Embed the images ``inputs`` name (files, folders, patterns, ``wds:`` / ``hf:`` sources) with
        ``model`` (pooled, as :func:`davit.embed_images`) and index them by name; an unreadable image
        raises :class:`~davit.errors.ImageLoadError`."""
        array = embed_images(model, list(inputs), batch_size=batch_size, num_workers=num_workers)
        names = [str(found) for item in inputs for found in expand_inputs([str(item)])]  # as embed_images reads them
        return cls.build(array, names, kind, **options)

    def __len__(self) -> int:
        return len(self.names)

    def search(self, queries: np.ndarray, k: int = 5) -> list[list[Neighbour]]:
        """The ``k`` nearest images of each (D,) or (Q, D) query vector, nearest first."""
        vectors = _unit_rows(np.atleast_2d(queries))
        if vectors.shape[1] != self.index.d:
            raise InvalidArgumentError(f"the queries have {vectors.shape[1]} dimensions, the index {self.index.d}; "
                                       "embed the queries with the model that embedded the set")
        scores, positions = self.index.search(vectors, min(k, len(self)))
        return [[Neighbour(self.names[p], float(s), rank) for rank, (s, p) in enumerate(zip(row_s, row_p), 1)
                 if p >= 0] for row_s, row_p in zip(scores, positions)]

    def search_images(self, model: Any, images: Sequence[ImageSource], k: int = 5,
                      **embed_options: Any) -> list[list[Neighbour]]:
        """The ``k`` nearest images of each query image, embedded by ``model`` (a model, or a name
        :func:`davit.get_model` takes) as :func:`davit.embed_images` does."""
        return self.search(embed_images(model, list(images), **embed_options), k)

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (the FAISS index) and ``path.json`` (names and info), each atomically."""
        faiss = _faiss()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path, suffix=".faiss") as tmp:
            faiss.write_index(self.index, str(tmp))
        with replacing(_sidecar(path)) as tmp:
            tmp.write_text(json.dumps({"info": self.info, "names": self.names}) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, nprobe: int | None = None) -> ImageIndex:
        faiss = _faiss()
        path = Path(path)
        if not path.is_file() or not _sidecar(path).is_file():
            raise InvalidArgumentError(f"{path} is not an image index (it and {_sidecar(path).name} are written by "
                                       "davit index)")
        index = faiss.read_index(str(path))
        if nprobe is not None and hasattr(index, "nprobe"):
            index.nprobe = nprobe
        content = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        return cls(index, content["names"], content.get("info"))


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _unit_rows(array: np.ndarray) -> np.ndarray:
    rows = np.ascontiguousarray(np.asarray(array, np.float32).reshape(len(array), -1))
    if not np.isfinite(rows).all():
        raise InvalidArgumentError("the embeddings hold NaN or infinite values; re-embed those images")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def neighbours_picture(query: ImageSource, neighbours: Sequence[Neighbour], tile: int = 160) -> Image.Image:
    """The query image beside its neighbours, each captioned with its rank, score and name."""
    tiles = [with_caption(fit(load_image(query), tile), [("query", _TEXT), (_short(str(query)), _TEXT)])]
    for neighbour in neighbours:
        try:
            image = fit(load_image(image_by_name(neighbour.name)), tile)
        except ImageLoadError:
            image = Image.new("RGB", (tile, tile), (200, 200, 200))  # gone since it was embedded
        tiles.append(with_caption(image, [(f"{neighbour.rank}. {neighbour.score:.3f}", _TEXT),
                                          (_short(neighbour.name), _TEXT)]))
    width = sum(t.width for t in tiles) + 8 * (len(tiles) - 1)
    canvas = Image.new("RGB", (width, max(t.height for t in tiles)), "white")
    x = 0
    for picture in tiles:
        canvas.paste(picture, (x, 0))
        x += picture.width + 8
    return canvas


def _short(name: str, length: int = 22) -> str:
    tail = name.replace("\\", "/").rsplit("/", 1)[-1]
    return tail if len(tail) <= length else "..." + tail[-length + 3:]
