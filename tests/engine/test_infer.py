"""engine.infer and engine.results: inputs, streamed result files, resume, Ctrl-C, autocast, and two
processes writing one output."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from davit.checkpoint.card import Preprocessing
from davit.checkpoint.formats import from_davit
from davit.engine import infer as infer_module
from davit.engine.infer import InferenceInterrupted, InferenceOptions, expand_inputs, infer
from davit.errors import InvalidArgumentError
from davit.model import DaViTClassifier

TINY_MODEL = json.dumps({"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1],
                         "num_heads": [1, 1, 1, 1]})


def write_tiny_checkpoint(path: Path) -> Path:
    """A random 10-class checkpoint of TINY_MODEL (mmpretrain layout) with a decisive head."""
    torch.manual_seed(0)
    model = DaViTClassifier(json.loads(TINY_MODEL), num_classes=10)
    with torch.no_grad():
        model.head.fc.weight.mul_(30)
    torch.save({"state_dict": from_davit(model.state_dict(), "mmpretrain")}, path)
    return path


def write_images(folder: Path, count: int, prefix: str = "img") -> list[Path]:
    """``count`` small random PNGs of different sizes, in sorted order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    paths = [folder / f"{prefix}{i:02d}.png" for i in range(count)]
    for i, path in enumerate(paths):
        Image.fromarray(rng.integers(0, 256, (30 + 3 * i, 40, 3), dtype=np.uint8)).save(path)
    return paths


def write_bad(path: Path) -> Path:
    path.write_bytes(b"\x89PNG not really")
    return path


class Collect:
    """A sink that keeps the records."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.closed = False

    def write(self, record: dict) -> None:
        self.records.append(record)

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pth"))


def options(checkpoint: str, inputs: list, **changes) -> InferenceOptions:
    fields = {"model": TINY_MODEL, "checkpoint": checkpoint, "device": "cpu", "num_workers": 0,
              "batch_size": 2, **changes}
    return InferenceOptions(inputs=tuple(map(str, inputs)), **fields)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_inputs_are_files_folders_and_patterns_each_once_in_order(tmp_path):
    folder = tmp_path / "a"
    (folder / "sub").mkdir(parents=True)
    for name in ("x.png", "sub/y.JPG", "notes.txt"):
        (folder / name).write_bytes(b"")
    single = tmp_path / "b.jpg"
    single.write_bytes(b"")

    found = expand_inputs([str(folder), str(tmp_path / "**" / "*.jpg"), str(single),
                           str(folder / "notes.txt"), str(tmp_path / "a*")])

    assert found == [folder / "sub" / "y.JPG", folder / "x.png", single, folder / "notes.txt"]


def test_inputs_that_yield_nothing_fail_before_the_model(tmp_path, monkeypatch):
    monkeypatch.setattr(infer_module, "get_model", _never)
    good = write_images(tmp_path / "good", 1)[0]
    (tmp_path / "empty").mkdir()
    expected = "missing.jpg does not exist; .*nothing/[*].png matches no image; .*empty holds no"
    with pytest.raises(InvalidArgumentError, match=expected):
        infer(options("unused", [good, tmp_path / "missing.jpg", tmp_path / "nothing" / "*.png",
                                 tmp_path / "empty"]))


@pytest.mark.parametrize("out", ["no-folder/r.jsonl", "is-a-folder.jsonl", "r.txt"])
def test_an_unwritable_output_fails_before_the_model(tmp_path, monkeypatch, out):
    monkeypatch.setattr(infer_module, "get_model", _never)
    (tmp_path / "is-a-folder.jsonl").mkdir()
    image = write_images(tmp_path, 1)[0]
    with pytest.raises(InvalidArgumentError, match="--out"):
        infer(options("unused", [image], out=str(tmp_path / out)))


def test_a_run_that_fails_before_any_result_keeps_the_earlier_file(tmp_path, monkeypatch):
    def unknown(*args, **kwargs):
        raise InvalidArgumentError("no such model")

    monkeypatch.setattr(infer_module, "get_model", unknown)
    out = tmp_path / "r.jsonl"
    out.write_text('{"path": "earlier.png", "error": "x"}\n')
    with pytest.raises(InvalidArgumentError, match="no such model"):
        infer(options("unused", write_images(tmp_path, 1), out=str(out)))
    assert out.read_text() == '{"path": "earlier.png", "error": "x"}\n'


def test_fp16_on_cpu_is_refused(tmp_path):
    with pytest.raises(InvalidArgumentError, match="fp16 needs a CUDA device"):
        infer(options("unused", write_images(tmp_path, 1), dtype="fp16"))


def test_a_bad_file_is_an_error_line_in_its_place(checkpoint, tmp_path):
    first, second = write_images(tmp_path, 2)
    bad = write_bad(tmp_path / "bad.png")
    out = tmp_path / "r.jsonl"

    summary = infer(options(checkpoint, [first, bad, second], out=str(out), topk=3))

    records = lines(out)
    assert [r["image"] for r in records] == [str(first), str(bad), str(second)]
    assert set(records[1]) == {"image", "error"} and records[1]["error"]["code"] == "unreadable_image"
    assert "bad.png" in records[1]["error"]["message"]
    for record in (records[0], records[2]):
        assert set(record) == {"image", "pred_label", "pred_score", "topk"}  # no class names
        assert len(record["topk"]) == 3
        assert record["topk"][0] == {"label": record["pred_label"], "score": record["pred_score"]}
    assert (summary.total, summary.done, summary.failed, summary.classified) == (3, 3, 1, 2)


def test_csv_output_with_workers(checkpoint, tmp_path):
    images = write_images(tmp_path, 3)
    bad = write_bad(tmp_path / "bad.png")
    out = tmp_path / "r.csv"

    infer(options(checkpoint, [*images, bad], out=str(out), topk=2, num_workers=2))

    rows = list(csv.DictReader(out.open()))
    assert [r["image"] for r in rows] == [str(p) for p in [*images, bad]]
    assert rows[3]["pred_label"] == "" and "bad.png" in rows[3]["error"]
    labels, scores = rows[0]["topk_labels"].split(";"), rows[0]["topk_scores"].split(";")
    assert labels[0] == rows[0]["pred_label"] and float(scores[0]) == float(rows[0]["pred_score"])
    assert len(labels) == len(scores) == 2 and rows[0]["error"] == ""


def test_resume_skips_the_done_paths_and_a_cut_last_line(checkpoint, tmp_path):
    images = write_images(tmp_path / "in", 5)
    out = tmp_path / "r.jsonl"
    infer(options(checkpoint, images[:3], out=str(out)))
    complete = out.read_text()
    out.write_text(complete[:-20])  # the third line cut short, as by a killed run

    summary = infer(options(checkpoint, [tmp_path / "in"], out=str(out), resume=True))

    assert [r["image"] for r in lines(out)] == [str(p) for p in images]
    assert (summary.total, summary.skipped, summary.done) == (5, 2, 3)
    assert out.read_text().startswith("".join(complete.splitlines(keepends=True)[:2]))


def test_resume_appends_csv_rows_under_the_one_header(checkpoint, tmp_path):
    images = write_images(tmp_path / "in", 3)
    out = tmp_path / "r.csv"
    infer(options(checkpoint, images[:1], out=str(out)))
    infer(options(checkpoint, images, out=str(out), resume=True))
    rows = list(csv.reader(out.open()))
    assert rows[0][0] == "image" and [row[0] for row in rows[1:]] == [str(p) for p in images]

    out.write_text("file,label\nx.png,3\n")
    with pytest.raises(InvalidArgumentError, match="does not have the columns"):
        infer(options(checkpoint, images, out=str(out), resume=True))


def test_ctrl_c_keeps_the_finished_lines_and_resume_finishes(checkpoint, tmp_path, monkeypatch):
    images = write_images(tmp_path / "in", 7)
    out = tmp_path / "r.jsonl"
    calls = []

    def interrupted_on_the_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = infer_module.class_probabilities
    monkeypatch.setattr(infer_module, "class_probabilities", interrupted_on_the_third_batch)
    with pytest.raises(InferenceInterrupted, match="after 4 of 7 images.*--resume") as stop:
        infer(options(checkpoint, [tmp_path / "in"], out=str(out)))
    assert stop.value.summary.done == 4
    assert [r["image"] for r in lines(out)] == [str(p) for p in images[:4]]

    monkeypatch.setattr(infer_module, "class_probabilities", original)
    infer(options(checkpoint, [tmp_path / "in"], out=str(out), resume=True))
    assert [r["image"] for r in lines(out)] == [str(p) for p in images]


def test_images_are_preprocessed_as_the_model_card_says(tmp_path, monkeypatch):
    model = DaViTClassifier(json.loads(TINY_MODEL), num_classes=3).eval()
    model.card = SimpleNamespace(preprocessing=Preprocessing(resize_edge=40, crop_size=32))
    model.class_names = ["a", "b", "c"]
    monkeypatch.setattr(infer_module, "get_model", lambda *args, **kwargs: model)
    shapes = []

    def recording(net, images, amp):
        shapes.append(tuple(images.shape))
        return original(net, images, amp)

    original = infer_module.class_probabilities
    monkeypatch.setattr(infer_module, "class_probabilities", recording)
    sink = Collect()
    infer(options("unused", write_images(tmp_path, 3), topk=5), sink)
    assert shapes == [(2, 3, 32, 32), (1, 3, 32, 32)]
    record = sink.records[0]
    assert len(record["topk"]) == 3 and record["pred_class"] == record["topk"][0]["class"]


def test_bf16_gives_the_top1_of_fp32(checkpoint, tmp_path):
    images = write_images(tmp_path, 4)
    fp32, bf16 = Collect(), Collect()
    infer(options(checkpoint, images), fp32)
    infer(options(checkpoint, images, dtype="bf16"), bf16)
    assert fp32.closed and bf16.closed
    assert [r["pred_label"] for r in bf16.records] == [r["pred_label"] for r in fp32.records]
    for a, b in zip(fp32.records, bf16.records):
        assert b["pred_score"] == pytest.approx(a["pred_score"], abs=0.05)


@pytest.mark.slow
def test_two_processes_write_each_image_once_in_input_order(checkpoint, tmp_path):
    images = write_images(tmp_path / "in", 7)
    bad = write_bad(tmp_path / "in" / "zz-bad.png")
    common = ["--model", TINY_MODEL, "--checkpoint", checkpoint, "--device", "cpu",
              "--batch-size", "2", "--num-workers", "0", str(tmp_path / "in")]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "davit", "predict", *common, "--out", str(tmp_path / "two.jsonl")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # the bad file; torchrun reports it with a traceback
    assert "davit predict: 7 image(s) classified, 1 failed (unreadable" in done.stderr, done.stderr

    one = Collect()
    infer(options(checkpoint, [tmp_path / "in"]), one)
    two = lines(tmp_path / "two.jsonl")
    assert [r["image"] for r in two] == [str(p) for p in [*images, bad]]
    for a, b in zip(one.records, two):
        assert a.get("pred_label") == b.get("pred_label") and ("error" in a) == ("error" in b)


def _never(*args, **kwargs):
    raise AssertionError("the model must not be built")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and symlinks as POSIX has them")
def test_a_hostile_folder_gives_every_good_image_its_result(checkpoint, tmp_path):
    """A FIFO, a symlink loop, a second link to one folder, a webp, a gif and a text file: the FIFO is
    an error record (never opened), each real folder is walked once, the Pillow formats are
    classified and the text file is counted as passed over."""
    root = tmp_path / "in"
    sub = root / "sub"
    sub.mkdir(parents=True)
    good = write_images(sub, 2)
    Image.open(good[0]).save(root / "photo.webp")
    Image.open(good[0]).save(root / "anim.gif")
    os.mkfifo(root / "pipe.jpg")
    (root / "notes.txt").write_text("not an image")
    (sub / "loop").symlink_to(root, target_is_directory=True)
    (root / "again").symlink_to(sub, target_is_directory=True)
    out = tmp_path / "r.jsonl"

    summary = infer(options(checkpoint, [str(root)], out=str(out), topk=2))

    records = {Path(r["image"]).name: r for r in lines(out)}
    assert len(lines(out)) == len(records) == 5  # each image once
    assert "not a regular file" in records["pipe.jpg"]["error"]["message"]
    assert all("pred_label" in records[name] for name in ("photo.webp", "anim.gif", good[0].name, good[1].name))
    assert (summary.failed, summary.classified, summary.not_images) == (1, 4, 1)


def test_resume_is_keyed_by_the_file_and_the_model(checkpoint, tmp_path, monkeypatch):
    write_images(tmp_path / "in", 3)
    out = tmp_path / "r.jsonl"
    monkeypatch.chdir(tmp_path)
    infer(options(checkpoint, ["in"], out=str(out)))  # a relative spelling
    summary = infer(options(checkpoint, [str((tmp_path / "in").resolve())], out=str(out), resume=True))
    assert summary.skipped == 3 and len(lines(out)) == 3  # the absolute spelling is the same files

    other = write_tiny_checkpoint(tmp_path / "other.pth")
    torch.manual_seed(1)
    changed = torch.load(other, weights_only=True)
    changed["state_dict"]["head.fc.bias"] = torch.randn_like(changed["state_dict"]["head.fc.bias"])
    torch.save(changed, other)
    write_images(tmp_path / "in", 1, "more")
    with pytest.raises(InvalidArgumentError, match="holds results of another model"):
        infer(options(str(other), [str(tmp_path / "in")], out=str(out), resume=True))
    assert len(lines(out)) == 3  # nothing mixed in
    assert infer(options(checkpoint, [str(tmp_path / "in")], out=str(out), resume=True)).done == 1
