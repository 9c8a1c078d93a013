"""davit predict."""
import json
import os
import sys

import pytest
import torch

from davit.checkpoint import resolve as resolve_module
from davit.cli.app import run_subcommand
from davit.engine import infer as infer_module
from tests.engine.test_infer import TINY_MODEL, write_bad, write_images, write_tiny_checkpoint
from tests.paths import REPO

CAT = str(REPO / "demo" / "cat.jpg")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    """The options of a random 10-class tiny model, decoding in this process."""
    checkpoint = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pth")
    return ["--model", TINY_MODEL, "--checkpoint", str(checkpoint), "--device", "cpu",
            "--num-workers", "0"]


def test_predict_json_and_bad_file(tiny_mm_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    code = run_subcommand("predict", [CAT, str(bad), "--checkpoint", str(tiny_mm_checkpoint),
                                      "--topk", "3", "--json"])
    captured = capsys.readouterr()
    assert code == 1
    records = json.loads(captured.out)
    assert len(records[0]["topk"]) == 3 and "class" in records[0]["topk"][0]
    assert "bad.png" in records[1]["error"]["message"]
    assert "bad.png" in captured.err


def test_each_bad_file_is_reported_once_and_the_good_ones_printed(tiny_mm_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((REPO / "demo" / "cat.jpg").read_bytes()[:2000])
    code = run_subcommand("predict", [str(bad), CAT, str(cut), "--checkpoint",
                                      str(tiny_mm_checkpoint), "--topk", "2"])
    captured = capsys.readouterr()
    assert code == 1
    errors = captured.err.splitlines()
    assert len(errors) == 2 and all(line.startswith("davit predict: error: ") for line in errors)
    assert "bad.png" in errors[0] and "cut.jpg" in errors[1]
    lines = captured.out.splitlines()
    assert lines[0] == CAT and len(lines) == 3
    score, label, name = lines[1].split(maxsplit=2)
    assert 0 < float(score) <= 1 and 0 <= int(label) < 1000 and name


def test_random_weights_run_offline(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise AssertionError("--random-weights must not download anything")

    monkeypatch.setattr(resolve_module, "download_checkpoint", offline)
    monkeypatch.setattr(resolve_module, "download_hf_checkpoint", offline)
    image = str(write_images(tmp_path, 1)[0])
    options = ["--device", "cpu", "--num-workers", "0", "--topk", "2"]  # the default zoo model
    assert run_subcommand("predict", [image, *options, "--random-weights", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records[0]["image"] == image and len(records[0]["topk"]) == 2
    checkpoint = str(tmp_path / "w.pth")
    assert run_subcommand("predict", [image, *options, "--random-weights", "--checkpoint", checkpoint]) == 1
    assert "--random-weights and --checkpoint exclude each other" in capsys.readouterr().err


def test_a_broken_exported_file_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("onnx")
    exported = tmp_path / "tiny.onnx"
    exported.write_bytes(b"onnx")
    assert run_subcommand("predict", [CAT, "--model", str(exported)]) == 1
    error = capsys.readouterr().err
    assert "is not a readable ONNX file" in error and len(error.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_device_error(capsys):
    assert run_subcommand("predict", [CAT, "--model", "davit-tiny", "--device", "cuda"]) == 1
    assert capsys.readouterr().err.startswith("davit predict: error: CUDA is not available")


def test_good_bad_good_to_a_jsonl_file(tiny, tmp_path, capsys):
    first, second = write_images(tmp_path, 2)
    bad = write_bad(tmp_path / "bad.png")
    out = tmp_path / "r.jsonl"
    code = run_subcommand("predict", [str(first), str(bad), str(second), *tiny, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [("error" in r) for r in records] == [False, True, False]
    assert "bad.png" in records[1]["error"]["message"] and "Traceback" not in captured.err
    assert captured.out == ""
    assert captured.err.strip() == (f"davit predict: 2 image(s) classified, 1 failed (unreadable; see "
                                   f"the error records); the results are in {out}")


def test_folders_and_patterns_to_csv(tiny, tmp_path):
    images = write_images(tmp_path / "in" / "sub", 2) + write_images(tmp_path / "in", 1, "top")
    out = tmp_path / "r.csv"
    assert run_subcommand("predict", [str(tmp_path / "in" / "**" / "*.png"), *tiny,
                                      "--out", str(out), "--topk", "2"]) == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "image,pred_label,pred_class,pred_score,topk_labels,topk_scores,error"
    assert [row.split(",")[0] for row in rows[1:]] == [str(p) for p in images]


def test_a_progress_bar_only_for_many_images(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # as on a terminal
    few = write_images(tmp_path / "few", 2)
    assert run_subcommand("predict", [*map(str, few), *tiny]) == 0
    assert "img/s" not in capsys.readouterr().err
    write_images(tmp_path / "many", 9)
    assert run_subcommand("predict", [str(tmp_path / "many"), *tiny, "--batch-size", "4"]) == 0
    captured = capsys.readouterr()
    assert "9/9" in captured.err and captured.out.count(str(tmp_path / "many")) == 9


def test_bad_inputs_and_outputs_fail_before_the_model(tmp_path, monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("the model must not be built")

    monkeypatch.setattr(infer_module, "get_model", never)
    image = str(write_images(tmp_path, 1)[0])
    for argv in ([image, "--out", str(tmp_path / "missing" / "r.jsonl")],
                 [image, str(tmp_path / "nothing-*.png")],
                 [image, "--resume"], [image, "--json", "--out", str(tmp_path / "r.jsonl")]):
        assert run_subcommand("predict", argv) == 1
        error = capsys.readouterr().err
        assert error.startswith("davit predict: error: ") and len(error.splitlines()) == 1


def test_ctrl_c_keeps_the_results_and_exits_130(tiny, tmp_path, monkeypatch, capsys):
    write_images(tmp_path / "in", 5)
    out = tmp_path / "r.jsonl"
    original = infer_module.class_probabilities
    calls = []

    def interrupted_on_the_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(infer_module, "class_probabilities", interrupted_on_the_second_batch)
    argv = [str(tmp_path / "in"), *tiny, "--out", str(out), "--batch-size", "2"]
    assert run_subcommand("predict", argv) == 130
    assert len(out.read_text().splitlines()) == 2
    assert capsys.readouterr().err.strip() == (
        f"davit predict: interrupted after 2 of 5 images; their results are in {out}; run the "
        "same command with --resume to classify the rest")
    monkeypatch.setattr(infer_module, "class_probabilities", original)
    assert run_subcommand("predict", [*argv, "--resume"]) == 0
    assert len(out.read_text().splitlines()) == 5
    assert "3 image(s) classified, 0 failed, 2 done before" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_retries_the_images_that_failed(tiny, tmp_path, capsys, suffix):
    """An image that could not be read is classified again by --resume once it is fixed, and
    the file ends with one line per image, each a result."""
    images = write_images(tmp_path / "in", 3)
    bad = write_bad(tmp_path / "in" / "img01.png")  # the middle one, unreadable the first time
    out = tmp_path / f"r{suffix}"
    argv = [str(tmp_path / "in"), *tiny, "--out", str(out)]
    assert run_subcommand("predict", argv) == 1
    assert "2 image(s) classified, 1 failed (unreadable; see the error records)" in capsys.readouterr().err
    write_images(tmp_path / "fixed", 3)
    bad.write_bytes((tmp_path / "fixed" / "img01.png").read_bytes())
    assert run_subcommand("predict", [*argv, "--resume"]) == 0
    assert capsys.readouterr().err.strip() == (f"davit predict: 1 image(s) classified, 0 failed, 2 done "
                                               f"before; the results are in {out}")
    if suffix == ".jsonl":
        records = [json.loads(line) for line in out.read_text().splitlines()]
        paths = [r["image"] for r in records]
        assert all("error" not in r and "pred_label" in r for r in records)
    else:
        rows = out.read_text().splitlines()
        assert rows[0].startswith("image,") and all(row.endswith(",") for row in rows[1:])  # no error
        paths = [row.split(",")[0] for row in rows[1:]]
    assert sorted(paths) == sorted(map(str, images))
    assert [p.name for p in tmp_path.glob(".r*")] == [f".r{suffix}.model"]  # no temporary file left behind


def test_resume_of_a_still_unreadable_image_keeps_one_error_line(tiny, tmp_path, capsys):
    write_images(tmp_path / "in", 2)
    write_bad(tmp_path / "in" / "bad.png")
    out = tmp_path / "r.jsonl"
    argv = [str(tmp_path / "in"), *tiny, "--out", str(out)]
    assert run_subcommand("predict", argv) == 1
    assert run_subcommand("predict", [*argv, "--resume"]) == 1
    assert "0 image(s) classified, 1 failed (unreadable; see the error records), 2 done before" \
        in capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and sum("error" in r for r in records) == 1


def test_no_progress_bar_when_stderr_is_not_a_terminal(tiny, tmp_path, capsys, monkeypatch):
    """`davit predict folder > out.txt 2> log.txt`: the log holds whole lines, no bar redraws."""
    write_images(tmp_path / "many", 9)
    write_bad(tmp_path / "many" / "zz-bad.png")
    argv = [str(tmp_path / "many"), *tiny, "--batch-size", "4"]
    assert run_subcommand("predict", argv) == 1
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "img/s" not in captured.err
    assert captured.err.splitlines() == [
        f"davit predict: error: {line.split('error: ', 1)[1]}" for line in captured.err.splitlines()]
    assert len(captured.out.splitlines()) == 9 * 6  # the path and its 5 classes, per image
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal does get the bar
    assert run_subcommand("predict", argv) == 1
    assert "10/10" in capsys.readouterr().err


def test_random_weights_are_seeded(tmp_path, capsys):
    image = str(write_images(tmp_path, 1)[0])
    options = [image, "--model", TINY_MODEL, "--random-weights", "--device", "cpu", "--num-workers", "0", "--json"]

    def scores(*extra: str) -> list[float]:
        assert run_subcommand("predict", [*options, *extra]) == 0
        return [top["score"] for top in json.loads(capsys.readouterr().out)[0]["topk"]]

    assert scores() == scores("--seed", "0")  # the default seed is fixed: the same command, the same answer
    assert scores("--seed", "3") == scores("--seed", "3") != scores()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_disk_while_writing_results_is_one_line(tiny, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    out.symlink_to("/dev/full")  # every write: No space left on device
    images = write_images(tmp_path / "in", 2)
    assert run_subcommand("predict", [*map(str, images), *tiny, "--out", str(out)]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"cannot write to {out}" in error and "--resume" in error
