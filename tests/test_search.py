"""Image search: every image of a set finds itself first (flat exactly; IVF and HNSW on a larger
set), the index saves and loads, and the commands go from images to embeddings to an index to
answers, pictures and a map."""
import json

import numpy as np
import pytest

import davit
from davit.cli.app import run_subcommand
from davit.engine.embed import save_embeddings
from davit.errors import InvalidArgumentError
from davit.search import ImageIndex
from tests.engine.test_embed_shards import write_shards
from tests.engine.test_infer import write_images
from tests.helpers import MINI_ARCH_JSON, tiny_classifier

faiss = pytest.importorskip("faiss")


def clustered(count: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, dim))
    return (centres[rng.integers(0, 8, count)] + 0.3 * rng.normal(size=(count, dim))).astype(np.float32)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_every_vector_finds_itself_first(kind):
    vectors = clustered(2000)
    names = [f"img{i}" for i in range(len(vectors))]
    index = ImageIndex.build(vectors, names, kind, nprobe=16)
    answers = index.search(vectors, k=3)
    found = np.mean([row[0].name == name for row, name in zip(answers, names)])
    assert found == 1.0 if kind == "flat" else found >= 0.99
    assert all(row[0].score == pytest.approx(1.0, abs=1e-4) for row in answers[:50]) if kind == "flat" else True
    assert [n.rank for n in answers[0]] == [1, 2, 3]


def test_scores_are_cosine_similarities_and_the_index_round_trips(tmp_path):
    vectors = clustered(50, dim=8)
    index = ImageIndex.build(vectors, [str(i) for i in range(50)], info={"model": "m"})
    query = vectors[:2] * 3.0  # the scale of a query does not matter
    (best, *_), _ = index.search(query, k=4)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = unit @ unit[0]
    assert best.name == "0" and best.score == pytest.approx(float(expected.max()), abs=1e-5)
    scores = [n.score for n in index.search(query[0], k=4)[0]]
    np.testing.assert_allclose(scores, np.sort(expected)[::-1][:4], atol=1e-5)
    index.save(tmp_path / "set.faiss")
    loaded = davit.ImageIndex.load(tmp_path / "set.faiss")
    assert loaded.names == index.names and loaded.info["model"] == "m" and len(loaded) == 50
    assert loaded.search(query, 4) == index.search(query, 4)


def test_bad_queries_and_sets_are_one_line():
    index = ImageIndex.build(clustered(10), [str(i) for i in range(10)])
    with pytest.raises(InvalidArgumentError, match="dimensions"):
        index.search(np.zeros((1, 5), np.float32))
    with pytest.raises(InvalidArgumentError, match="NaN"):
        ImageIndex.build(np.full((2, 4), np.nan, np.float32), ["a", "b"])
    with pytest.raises(InvalidArgumentError, match="clusters"):
        ImageIndex.build(clustered(10), [str(i) for i in range(10)], "ivf", nlist=20)


def test_search_images_with_the_model(tmp_path):
    paths = write_images(tmp_path / "set", 6)
    model = tiny_classifier(["a", "b", "c"], spread=5.0)
    array = davit.embed_images(model, [str(p) for p in paths])
    index = ImageIndex.build(array, [str(p) for p in paths])
    answers = index.search_images(model, [str(p) for p in paths], k=2)
    assert [row[0].name for row in answers] == [str(p) for p in paths]


def test_from_images_to_an_index_to_answers_pictures_and_a_map(tmp_path, capsys):
    names = write_shards(tmp_path / "wds", 2, 6)
    source = f"wds:{tmp_path}/wds/photos-{{000..001}}.tar"
    seed = ["--model", MINI_ARCH_JSON, "--random-weights", "--seed", "3"]
    assert run_subcommand("embed", [*seed, source, "--out", f"{tmp_path}/emb/", "--num-workers", "0"]) == 0
    assert run_subcommand("index", [str(tmp_path / "emb"), "--out", str(tmp_path / "photos.faiss"),
                                    "--map", str(tmp_path / "map.png")]) == 0
    assert (tmp_path / "map.png").read_bytes().startswith(b"\x89PNG")
    capsys.readouterr()
    # the index records the model (from the embedding manifest); the seed makes the same random weights
    assert run_subcommand("search", [str(tmp_path / "photos.faiss"), source, "-k", "3", "--random-weights",
                                     "--seed", "3", "--json", str(tmp_path / "answers.json"),
                                     "--show-dir", str(tmp_path / "show")]) == 0
    answers = json.loads((tmp_path / "answers.json").read_text())
    assert [a["query"] for a in answers] == names
    assert all(a["neighbours"][0]["name"] == a["query"] for a in answers)
    assert all(a["neighbours"][0]["score"] == pytest.approx(1.0, abs=1e-4) for a in answers)
    pictures = sorted((tmp_path / "show").iterdir())
    assert len(pictures) == len(names) and pictures[0].name == "0000_photos-000.tar_000_0000.png"
    out = capsys.readouterr().out
    assert out.splitlines()[0] == names[0] and "  1. 1.0000  " in out


def test_token_embeddings_are_refused_for_an_index(tmp_path):
    tokens = save_embeddings(tmp_path / "tokens.npz", np.zeros((3, 4, 5), np.float32), ["a", "b", "c"], "tokens")
    with pytest.raises(InvalidArgumentError, match="token embeddings"):
        ImageIndex.from_embeddings(tokens)
