"""Images stored inside other files: webdataset tar shards and Hugging Face datasets.

Anywhere a folder of images is taken (``davit predict``, ``embed``, ``test``, ``train``,
calibration), a source string may name a set of stored images instead:

* ``wds:shards/train-{0000..0099}.tar``: webdataset shards (brace ranges and glob patterns, local
  uncompressed tar files, as img2dataset and ``webdataset.TarWriter`` write them). A sample is the
  group of members that share a key (the member name up to its first dot); its image is the first
  of ``image_key`` (default ``jpg;jpeg;png;webp``) it has, its class the integer in ``label_key``
  (default ``cls``). Options follow a ``?``: ``wds:shards/{0..9}.tar?image_key=png&label_key=cls``.
* ``hf:NAME_OR_FOLDER``: a Hugging Face dataset, a folder written by ``Dataset.save_to_disk`` or a
  dataset name (``datasets.load_dataset``, from its cache when offline), with its ``image_column``
  (default ``image``), ``label_column`` (default ``label``) and ``split`` (default ``train``):
  ``hf:beans?split=validation&image_column=image``.

The shards are indexed once (tar headers, not the images), so every sample has a position: the
samples are split across processes and DataLoader workers exactly as files are (each once, in
order), and a run resumes by sample key. A sample is named ``SHARD#KEY`` (``hf:NAME#ROW`` for a
dataset row) in records and messages; one whose bytes are missing or corrupt becomes an error
record under that name, and the others go on.
"""
from __future__ import annotations

import functools
import glob
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from ..errors import DatasetError, ImageLoadError, InvalidArgumentError
from .images import StoredImage

WEBDATASET_PREFIX = "wds:"
HF_PREFIX = "hf:"
DEFAULT_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
DEFAULT_LABEL_KEY = "cls"
NO_LABEL = -1  # a sample without a class member or column
_WEBDATASET_OPTIONS = ("image_key", "label_key")
_HF_OPTIONS = ("split", "image_column", "label_column")


@dataclass(frozen=True)
class ShardMember:
    """The image of one webdataset sample: ``size`` bytes at ``offset`` in the tar file ``shard``
    (``problem`` says why a sample has no readable image)."""

    shard: str
    key: str
    offset: int = 0
    size: int = 0
    problem: str | None = None

    def __str__(self) -> str:
        return f"{self.shard}#{self.key}"

    def read(self) -> bytes:
        if self.problem is not None:
            raise ImageLoadError(f"{self}: {self.problem}")
        try:
            with open(self.shard, "rb") as file:
                file.seek(self.offset)
                data = file.read(self.size)
        except OSError as error:
            raise ImageLoadError(f"{self}: cannot read the shard ({error.strerror or error})") from None
        if len(data) != self.size:
            raise ImageLoadError(f"{self}: the shard ends inside this image (truncated); rewrite the shard")
        return data


@dataclass(frozen=True, eq=False)
class DatasetRow:
    """The image of row ``index`` of a Hugging Face dataset (its image column not decoded)."""

    dataset: Any = field(repr=False)
    index: int
    column: str
    name: str

    def __str__(self) -> str:
        return f"{self.name}#{self.index}"

    def read(self) -> bytes:
        value = self.dataset[self.index][self.column]
        if isinstance(value, dict):  # the Image feature, undecoded: {"bytes": ..., "path": ...}
            if value.get("bytes"):
                return bytes(value["bytes"])
            value = value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str) and os.path.isfile(value):
            return Path(value).read_bytes()
        raise ImageLoadError(f"{self}: column {self.column!r} holds no image (got {type(value).__name__})")


@dataclass
class StoredSamples:
    """The images a source names, their labels (``NO_LABEL`` when it has none) and class names."""

    images: list[StoredImage]
    labels: list[int]
    classes: list[str] | None = None
    source: str = ""

    def pairs(self) -> list[tuple[StoredImage, int]]:
        return list(zip(self.images, self.labels))


def is_stored_source(text: str) -> bool:
    """Whether ``text`` names stored images (``wds:...`` or ``hf:...``) rather than files."""
    return text.startswith((WEBDATASET_PREFIX, HF_PREFIX))


def stored_samples(text: str) -> StoredSamples:
    """The samples of a ``wds:`` or ``hf:`` source string (see the module's docstring)."""
    if text.startswith(WEBDATASET_PREFIX):
        spec, options = _split_options(text[len(WEBDATASET_PREFIX):], _WEBDATASET_OPTIONS, text)
        keys = options.get("image_key")
        return webdataset_samples(spec, tuple(keys.split(";")) if keys else DEFAULT_IMAGE_KEYS,
                                  options.get("label_key", DEFAULT_LABEL_KEY))
    if text.startswith(HF_PREFIX):
        spec, options = _split_options(text[len(HF_PREFIX):], _HF_OPTIONS, text)
        return hf_samples(spec, options.get("split"), options.get("image_column", "image"),
                          options.get("label_column", "label"))
    raise InvalidArgumentError(f"{text} is not a stored-image source; start it with {WEBDATASET_PREFIX} "
                               f"(webdataset shards) or {HF_PREFIX} (a Hugging Face dataset)")


def _split_options(text: str, allowed: Sequence[str], whole: str) -> tuple[str, dict[str, str]]:
    spec, _, query = text.rpartition("?") if "=" in text.rpartition("?")[2] else (text, "", "")
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InvalidArgumentError(f"{whole}: unknown option(s) {unknown}; the options are {list(allowed)}")
    if not spec:
        raise InvalidArgumentError(f"{whole} names no shards or dataset after the prefix")
    return spec, options


def shard_paths(pattern: str) -> list[str]:
    """The tar files a webdataset pattern names: brace ranges (``{0000..0099}``, ``{a,b}``)
    expanded, then glob patterns matched, in order, each once."""
    if "://" in pattern or pattern.startswith("pipe:"):
        raise DatasetError(f"{pattern}: shards are read from local files (random access splits them "
                           "exactly across processes); download them first, e.g. with gsutil or aws s3 cp")
    try:
        from braceexpand import braceexpand  # webdataset's own pattern syntax
    except ImportError:
        raise InvalidArgumentError("webdataset shards need the webdataset package: "
                                   "pip install 'davit-toolkit[datasets]'") from None

    paths: dict[str, None] = {}
    missing = []
    for expanded in braceexpand(os.path.expanduser(pattern)):
        matches = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else \
            ([expanded] if os.path.isfile(expanded) else [])
        if not matches:
            missing.append(expanded)
        paths.update(dict.fromkeys(matches))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DatasetError(f"webdataset shard(s) {shown} do not exist; check the pattern {pattern}")
    return list(paths)


def webdataset_samples(pattern: str, image_keys: Sequence[str] = DEFAULT_IMAGE_KEYS,
                       label_key: str = DEFAULT_LABEL_KEY) -> StoredSamples:
    """Index the samples of the shards ``pattern`` names (tar headers and class members only)."""
    images: list[StoredImage] = []
    labels: list[int] = []
    for shard in shard_paths(pattern):
        for member, label in _index_shard(shard, tuple(k.lower().lstrip(".") for k in image_keys), label_key):
            images.append(member)
            labels.append(label)
    if not images:
        raise DatasetError(f"the shards {pattern} hold no samples")
    return StoredSamples(images, labels, None, f"{WEBDATASET_PREFIX}{pattern}")


def _index_shard(shard: str, image_keys: tuple[str, ...], label_key: str) -> list[tuple[ShardMember, int]]:
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    problem = None
    try:
        with tarfile.open(shard, mode="r:") as tar:
            try:
                for info in tar:
                    if info.isfile():
                        folder, _, base = info.name.rpartition("/")
                        stem, dot, extension = base.partition(".")
                        if dot:
                            groups.setdefault(f"{folder}/{stem}" if folder else stem, {})[extension.lower()] = info
            except (tarfile.TarError, OSError) as error:
                problem = f"the shard is corrupt after its first {len(groups)} samples ({error})"
            labels = {key: _read_label(tar, files.get(label_key), shard, key) for key, files in groups.items()}
    except tarfile.ReadError as error:
        raise DatasetError(f"{shard} is not an uncompressed tar file ({error}); webdataset shards are read "
                           "with random access: decompress .tar.gz shards first") from None
    samples = []
    for key, files in groups.items():
        found = next((files[k] for k in image_keys if k in files), None)
        member = ShardMember(shard, key, found.offset_data, found.size) if found is not None else \
            ShardMember(shard, key, problem=f"the sample has no image member ({', '.join(image_keys)}); "
                                            f"it has {sorted(files)}; set image_key")
        samples.append((member, labels[key]))
    if problem is not None:  # what was read is kept; the damage is one record
        samples.append((ShardMember(shard, f"<after {len(groups)} samples>", problem=problem), NO_LABEL))
    return samples


def _read_label(tar: tarfile.TarFile, info: tarfile.TarInfo | None, shard: str, key: str) -> int:
    if info is None:
        return NO_LABEL
    handle = tar.extractfile(info)
    text = handle.read(64).decode("utf-8", "replace").strip() if handle is not None else ""
    try:
        return int(text)
    except ValueError:
        raise DatasetError(f"{shard}#{key}: the class member {info.name} holds {text!r}, not an integer "
                           "class index") from None


def hf_samples(spec: str, split: str | None = None, image_column: str = "image",
               label_column: str = "label") -> StoredSamples:
    """The rows of a Hugging Face dataset: a ``save_to_disk`` folder or a dataset name."""
    try:
        import datasets
    except ImportError:
        raise InvalidArgumentError("Hugging Face datasets need the datasets package: "
                                   "pip install 'davit-toolkit[datasets]'") from None
    name = f"{HF_PREFIX}{spec}" + (f"[{split}]" if split else "")
    folder = Path(os.path.expanduser(spec))
    try:
        if folder.is_dir():
            loaded = datasets.load_from_disk(str(folder))
        else:
            loaded = datasets.load_dataset(spec, split=split or "train")
    except (FileNotFoundError, ValueError, ConnectionError) as error:
        raise DatasetError(f"cannot open the Hugging Face dataset {spec}: {error}") from None
    if isinstance(loaded, datasets.DatasetDict):
        chosen = split or ("train" if "train" in loaded else next(iter(loaded)))
        if chosen not in loaded:
            raise DatasetError(f"{spec} has the splits {list(loaded)}, not {chosen!r}; set split=")
        loaded = loaded[chosen]
    columns = loaded.column_names
    if image_column not in columns:
        raise DatasetError(f"{spec} has no column {image_column!r} (its columns: {columns}); set image_column=")
    if isinstance(loaded.features[image_column], datasets.Image):
        loaded = loaded.cast_column(image_column, datasets.Image(decode=False))
    classes = None
    labels = [NO_LABEL] * len(loaded)
    if label_column in columns:
        labels = [int(value) for value in loaded[label_column]]
        feature = loaded.features[label_column]
        classes = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    rows: list[StoredImage] = [DatasetRow(loaded, i, image_column, name) for i in range(len(loaded))]
    if not rows:
        raise DatasetError(f"the Hugging Face dataset {spec} has no rows")
    return StoredSamples(rows, labels, classes, name)


def image_by_name(name: str) -> Path | StoredImage:
    """The image a record or an index names: ``SHARD.tar#KEY`` (a webdataset sample),
    ``hf:NAME#ROW`` (a dataset row) or a file path."""
    if name.startswith(HF_PREFIX) and "#" in name:
        spec, _, row = name.rpartition("#")
        split = spec[spec.index("[") + 1:-1] if spec.endswith("]") else None
        dataset = hf_samples(spec[len(HF_PREFIX):spec.index("[")] if split else spec[len(HF_PREFIX):], split)
        return dataset.images[int(row)]
    shard, hash_sign, key = name.rpartition("#")
    if hash_sign and shard.endswith(".tar") and os.path.isfile(shard):
        for member in _shard_index(shard):
            if member.key == key:
                return member
        raise ImageLoadError(f"{shard} holds no sample {key!r}")
    return Path(name)


@functools.lru_cache(maxsize=64)
def _shard_index(shard: str) -> list[ShardMember]:
    return [member for member, _ in _index_shard(shard, DEFAULT_IMAGE_KEYS, DEFAULT_LABEL_KEY)]
