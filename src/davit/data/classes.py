"""ImageNet-1k class names and WordNet synsets, in model output order."""

from functools import cache
from importlib import resources

_TABLE = "imagenet1k-classes.tsv"


@cache
def _rows() -> tuple[tuple[str, str], ...]:
    """(synset, name) for each class, read once from the package data."""
    text = resources.files(__package__).joinpath(_TABLE).read_text(encoding="utf-8")
    header, *lines = text.splitlines()
    if header.split("\t") != ["index", "synset", "name"]:
        raise RuntimeError(f"{_TABLE}: unexpected header {header!r}")
    rows = []
    for position, line in enumerate(lines):
        index, synset, name = line.split("\t")
        if int(index) != position:
            raise RuntimeError(f"{_TABLE}: row {position} has index {index}")
        rows.append((synset, name))
    return tuple(rows)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, as mmpretrain reports ``pred_class``."""
    return [name for _, name in _rows()]


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids (``n01440764``, ...), in class order."""
    return [synset for synset, _ in _rows()]
