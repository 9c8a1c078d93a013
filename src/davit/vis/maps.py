"""A 2-D map of an embedding set: PCA (numpy, always there) or UMAP (umap-learn), drawn as a scatter
plot with matplotlib, coloured by label when there are labels."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InvalidArgumentError

MAP_METHODS = ("pca", "umap")


def project_2d(embeddings: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(N, 2) coordinates of (N, D) ``embeddings``: their first two principal components, or UMAP's."""
    data = np.asarray(embeddings, np.float32).reshape(len(embeddings), -1)
    if len(data) < 2:
        raise InvalidArgumentError("a map needs at least two embeddings")
    if method == "pca":
        centred = data - data.mean(axis=0)
        _, _, components = np.linalg.svd(centred, full_matrices=False)
        return centred @ components[:2].T
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise InvalidArgumentError("UMAP maps need umap-learn: pip install umap-learn (or use --map-method pca)"
                                       ) from None
        return umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(data) - 1)).fit_transform(data)
    raise InvalidArgumentError(f"map method {method!r}: use one of {list(MAP_METHODS)}")


def save_embedding_map(embeddings: np.ndarray, path: str | Path, method: str = "pca",
                       labels: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Draw the 2-D map of ``embeddings`` (coloured by ``labels``, one per row) into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = project_2d(embeddings, method)
    figure, axes = plt.subplots(figsize=(7, 6), dpi=120)
    if labels is not None:
        for name in sorted(set(labels)):
            chosen = np.array([label == name for label in labels])
            axes.scatter(points[chosen, 0], points[chosen, 1], s=12, label=name, alpha=0.8)
        if len(set(labels)) <= 20:
            axes.legend(fontsize=7, markerscale=1.5)
    else:
        axes.scatter(points[:, 0], points[:, 1], s=8, alpha=0.7)
    axes.set_title(title or f"{len(points)} embeddings, {method.upper()}")
    axes.set_xticks([])
    axes.set_yticks([])
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
