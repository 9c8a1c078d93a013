"""``davit predict`` on a file ``davit export`` wrote: it runs on the file's runtime with the file's card
and gives the source model's predictions, without re-exporting; what the file cannot do is refused
before any image is read."""
import pytest

from davit import save_pretrained
from davit.checkpoint.card import Preprocessing
from davit.cli.app import run_subcommand
from davit.engine.infer import InferenceOptions, infer
from davit.errors import InvalidArgumentError
from tests.helpers import tiny_classifier
from tests.paths import REPO

pytestmark = pytest.mark.slow  # exports, then predicts from the files

PHOTOS = tuple(str(path) for path in sorted((REPO / "demo").glob("*.jpg")))

pytest.importorskip("onnxruntime")


class _Records:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny five-class classifier with a card, saved as a folder and exported with davit export."""
    model = tiny_classifier(("ant", "bee", "cat", "dog", "eel"), Preprocessing(73, 64, "bicubic"), spread=100)
    folder = tmp_path_factory.mktemp("exported")
    saved = save_pretrained(model, folder / "tiny")
    formats = [("tiny.onnx", []), ("tiny.pt2", ["--format", "exported-program"])]
    for name, extra in formats:
        assert run_subcommand("export", [str(saved), str(folder / name), *extra]) == 0
    return saved, folder


def _predict(**options) -> list[dict]:
    sink = _Records()
    infer(InferenceOptions(inputs=PHOTOS, num_workers=0, device="cpu", **options), sink)
    return sink.records


@pytest.mark.parametrize("name, backend", [("tiny.onnx", "torch"), ("tiny.pt2", "torch"),
                                           ("tiny.onnx", "openvino")])
def test_an_exported_file_predicts_as_its_source(source, name, backend):
    if backend == "openvino":
        pytest.importorskip("openvino")
    saved, folder = source
    expected = _predict(checkpoint=str(saved))
    got = _predict(model=str(folder / name), backend=backend)
    assert [r["pred_label"] for r in got] == [r["pred_label"] for r in expected]
    assert [r["pred_class"] for r in got] == [r["pred_class"] for r in expected]  # the file's card
    for mine, theirs in zip(got, expected):
        assert mine["pred_score"] == pytest.approx(theirs["pred_score"], abs=1e-4)


def test_the_command_line_takes_it_as_model_or_checkpoint(source, capsys):
    _, folder = source
    for flag in ("--model", "--checkpoint"):
        assert run_subcommand("predict", [PHOTOS[0], flag, str(folder / "tiny.onnx"), "--num-workers", "0"]) == 0
        assert any(name in capsys.readouterr().out for name in ("ant", "bee", "cat", "dog", "eel"))


@pytest.mark.parametrize("options, message", [
    ({"random_weights": True}, "drop --random-weights"),
    ({"dtype": "bf16"}, "pass --backend openvino for bf16"),
    ({"device": "cuda"}, "runs on the CPU"),
    ({"backend": "openvino", "dtype": "fp16"}, "not fp16"),
])
def test_what_the_file_cannot_do_is_refused_first(source, options, message):
    _, folder = source
    with pytest.raises(InvalidArgumentError, match=message):
        infer(InferenceOptions(inputs=("no-such-image.jpg",), model=str(folder / "tiny.onnx"), **options))
