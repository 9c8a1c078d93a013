"""``davit serve --compile``: the classifier as inductor's graph with frozen weights, compiled at
start-up for one image and the largest batch, giving the eager model's answers at any batch size."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from davit import get_model
from davit.checkpoint.card import Preprocessing
from davit.checkpoint.pretrained import save_pretrained
from davit.cli.app import run_subcommand
from davit.errors import InvalidArgumentError
from davit.exported import open_backend
from davit.serve.model import Int8Serving, load_served_model
from tests.helpers import MINI_ARCH_JSON, MINI_FLORENCE2


@pytest.fixture(scope="module")
def folder_64(tmp_path_factory):
    # 64x64, not the other serve tests' 32x32: inductor (torch 2.14.1) aborts with a double free
    # compiling this width of DaViT for 32x32 images, with or without this library's kernels
    torch.manual_seed(0)
    model = get_model(MINI_ARCH_JSON, num_classes=3)
    model.card = dataclasses.replace(model.card, class_names=("a", "b", "c"), preprocessing=Preprocessing(72, 64))
    return save_pretrained(model, tmp_path_factory.mktemp("compiled") / "mini")


def test_a_compiled_classifier_is_served_and_answers_as_the_eager_one(folder_64):
    eager = load_served_model(str(folder_64))
    compiled = load_served_model(str(folder_64), compiled=True, max_batch_size=1)  # one graph: a compilation is slow
    assert compiled.backend == compiled.classifier.name == "torch-compiled"
    assert compiled.classifier.model.batch_sizes == (1,)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)  # cut into batches of the compiled size
    torch.testing.assert_close(compiled.classifier(images), eager.classifier(images), atol=1e-4, rtol=1e-4)
    with pytest.raises(InvalidArgumentError, match="compiled for 64x64 images"):
        compiled.classifier(torch.randn(1, 3, 40, 40))


def test_compile_is_refused_where_it_would_not_apply(tiny_folder):
    with pytest.raises(InvalidArgumentError, match="compiled already; drop --compile"):
        load_served_model(str(tiny_folder), compiled=True, int8=Int8Serving(str(tiny_folder)))
    with pytest.raises(InvalidArgumentError, match="no classification head"):
        load_served_model(MINI_FLORENCE2, random_weights=True, compiled=True)
    model = load_served_model(str(tiny_folder)).model
    with pytest.raises(InvalidArgumentError, match="for the torch backend, not onnxruntime"):
        open_backend(model, "onnxruntime", compiled=True)


def test_davit_serve_compile_on_another_runtime_is_one_line_error(folder_64, capsys):
    assert run_subcommand("serve", [str(folder_64), "--port", "1", "--compile", "--backend", "onnxruntime"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "compiling is for the torch backend" in error
