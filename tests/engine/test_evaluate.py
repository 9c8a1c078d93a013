"""tools/test.py: the seed command, exact metrics, multi-process runs, bad input, class folders."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from davit import get_model, inference_model
from davit.checkpoint.formats import from_davit
from davit.cli import main as cli_main
from davit.cli.app import run_subcommand
from davit.data import ClassFolderDataset, build_test_transform, imagenet_synsets
from davit.engine import evaluate, reports
from davit.engine.distributed import ShardSampler
from davit.model import DaViTClassifier
from tests.paths import REPO

SEED_URL = ("https://download.openmmlab.com/mmclassification/v0/davit/"
            "davit-tiny_3rdparty_in1k_20221116-700fdf7d.pth")
CONFIG = "configs/davit/davit-tiny_4xb256_in1k.py"
TINY_ARCH = {"embed_dims": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 3, 4]}
TINY_CLASSES = 10
TINY_OPTIONS = [f"model.backbone.arch={TINY_ARCH}", f"model.head.num_classes={TINY_CLASSES}",
                "model.head.in_channels=64"]


def main(argv: list[str]) -> int:
    """``python tools/test.py ARGV``, in this process."""
    return run_subcommand("test", argv, prog="tools/test.py")


def _photos() -> list[Image.Image]:
    """Seven real photos: the two demo images and crops, resizes and flips of them."""
    cat = Image.open(REPO / "demo" / "cat.jpg").convert("RGB")
    coffee = Image.open(REPO / "demo" / "coffee.jpg").convert("RGB")
    return [cat, coffee, cat.crop((40, 30, 360, 280)), coffee.resize((300, 200)),
            cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT), coffee.crop((100, 0, 500, 400)),
            cat.convert("L").resize((260, 240))]


def write_imagenet(root: Path, labels: list[int]) -> list[Path]:
    """An ImageNet-format val set under ``root``: val/ images and meta/val.txt."""
    (root / "meta").mkdir(parents=True)
    (root / "val").mkdir()
    paths, lines = [], []
    for i, (photo, label) in enumerate(zip(_photos(), labels)):
        name = f"img_{i}.{'png' if i % 3 == 2 else 'jpg'}"
        photo.save(root / "val" / name)
        paths.append(root / "val" / name)
        lines.append(f"{name} {label}\n")
    (root / "meta" / "val.txt").write_text("".join(lines))
    return paths


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random tiny-architecture, 10-class checkpoint (mmpretrain format) with a decisive head."""
    torch.manual_seed(0)
    model = DaViTClassifier(TINY_ARCH, num_classes=TINY_CLASSES)
    with torch.no_grad():
        model.head.fc.weight.mul_(30)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pth"
    torch.save({"state_dict": from_davit(model.state_dict(), "mmpretrain")}, path)
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> tuple[Path, list[Path], list[int]]:
    labels = [3, 7, 3, 7, 1, 0, 3]
    root = tmp_path_factory.mktemp("tinydata") / "imagenet"
    return root, write_imagenet(root, labels), labels


def run_tiny(args: list[str], data_root: Path, checkpoint: Path, extra_options: tuple = ()) -> int:
    options = [*TINY_OPTIONS, f"test_dataloader.dataset.data_root={data_root}", *extra_options]
    return main([str(REPO / CONFIG), str(checkpoint), "--device", "cpu", "--cfg-options",
                 *options, *args])


@pytest.mark.slow
def test_seed_command_verbatim(tmp_path):
    """The seed's command, run as written from a directory laid out like the repository."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    (tmp_path / "tools").symlink_to(REPO / "tools")
    write_imagenet(tmp_path / "data" / "imagenet", [281, 967, 281, 967, 281])
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    weights = from_davit(DaViTClassifier("tiny").state_dict(), "mmpretrain")
    torch.save({"state_dict": weights}, cache / SEED_URL.rsplit("/", 1)[1])
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["TORCH_HOME"] = str(tmp_path / "torch_home")

    done = subprocess.run([sys.executable, "tools/test.py", CONFIG, SEED_URL], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr
    assert "accuracy/top1: " in done.stdout and "accuracy/top5: " in done.stdout
    assert "evaluated 5 images, failed 0" in done.stdout
    (work_dir,) = (tmp_path / "work_dirs" / "davit-tiny_4xb256_in1k").iterdir()
    metrics = json.loads((work_dir / "metrics.json").read_text())
    assert set(metrics) >= {"accuracy/top1", "accuracy/top5"}
    assert (metrics["evaluated"], metrics["failed"], metrics["semantics"]) == (5, 0, "mmpretrain")
    assert (work_dir / "davit-tiny_4xb256_in1k.py").is_file()
    assert (work_dir / "per_class_accuracy.csv").read_text().startswith("label,class,images")


def test_metrics_are_exact_and_match_inference_model(tiny_checkpoint, tiny_data, tmp_path):
    root, paths, labels = tiny_data
    out = tmp_path / "pred.json"
    assert run_tiny(["--work-dir", str(tmp_path / "work"), "--out", str(out), "--out-item", "pred",
                     "--batch-size", "3", "--num-workers", "2"], root, tiny_checkpoint) == 0
    records = json.loads(out.read_text())
    metrics = json.loads((tmp_path / "work" / "metrics.json").read_text())

    assert [r["image"] for r in records] == [str(p) for p in paths]
    assert [r["gt_label"] for r in records] == labels
    top1 = sum(r["pred_label"] == r["gt_label"] for r in records)
    # mmpretrain counts a top-k hit only when its score is above 0 (the default thrs=0.0)
    top5 = sum(any(label == r["gt_label"] and score > 0 for label, score in
                   [(t["label"], t["score"]) for t in r["topk"][:5]]) for r in records)
    assert metrics["accuracy/top1"] == 100.0 * top1 / len(records)
    assert metrics["accuracy/top5"] == 100.0 * top5 / len(records)
    assert 0 < top5 < len(records), "the fixture should give a non-trivial top-5 accuracy"
    csv_rows = (tmp_path / "work" / "per_class_accuracy.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + len(set(labels))

    model = get_model(TINY_ARCH, pretrained=str(tiny_checkpoint), semantics="mmpretrain")
    expected = inference_model(model, [str(p) for p in paths])
    for record, result in zip(records, expected):
        assert record["pred_label"] == result["pred_label"]
        assert record["pred_score"] == pytest.approx(result["pred_score"], abs=1e-5)
        assert record["topk"][0]["label"] == result["pred_label"]


@pytest.mark.slow
def test_two_processes_match_one(tiny_checkpoint, tiny_data, tmp_path):
    root, paths, _ = tiny_data
    common = [str(REPO / CONFIG), str(tiny_checkpoint), "--device", "cpu", "--batch-size", "2",
              "--num-workers", "0", "--out-item", "pred", "--cfg-options", *TINY_OPTIONS,
              f"test_dataloader.dataset.data_root={root}"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPO / "tools" / "test.py"), *common, "--work-dir", str(tmp_path / "two"),
         "--out", str(tmp_path / "two.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert main([*common, "--work-dir", str(tmp_path / "one"), "--out", str(tmp_path / "one.json")]) == 0

    two = json.loads((tmp_path / "two.json").read_text())
    one = json.loads((tmp_path / "one.json").read_text())
    assert len(two) == len(one) == len(paths) == 7
    for a, b in zip(one, two):
        assert (a["index"], a["image"], a["gt_label"], a["pred_label"], [t["label"] for t in a["topk"]]) == \
               (b["index"], b["image"], b["gt_label"], b["pred_label"], [t["label"] for t in b["topk"]])
        assert a["pred_score"] == pytest.approx(b["pred_score"], abs=1e-6)
    m_one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m_two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m_two["processes"] == 2
    for key in ("accuracy/top1", "accuracy/top5", "evaluated", "failed"):
        assert m_one[key] == m_two[key]
    assert done.stdout.count("evaluated 7 images, failed 0") == 1


def test_shard_sampler_covers_every_index_once():
    shards = [list(ShardSampler(7, rank, 3)) for rank in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(i for s in shards for i in s) == list(range(7))


@pytest.fixture
def no_model_work(monkeypatch):
    """Fail the test if the evaluation gets as far as building a model."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("a model was built before the input was checked")
    monkeypatch.setattr(evaluate, "build_model", refuse)


def _one_line_error(capsys, *phrases: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("tools/test.py: error: "), err
    for phrase in phrases:
        assert phrase in err, err
    return err


def test_label_outside_model_classes(tiny_checkpoint, tmp_path, capsys, no_model_work):
    root = tmp_path / "imagenet"
    write_imagenet(root, [1, 2, TINY_CLASSES])
    assert run_tiny([], root, tiny_checkpoint) == 1
    _one_line_error(capsys, "val.txt line 3", f"label {TINY_CLASSES}", "outside the model's 10 classes")


def test_empty_dataset(tiny_checkpoint, tmp_path, capsys, no_model_work):
    root = tmp_path / "imagenet"
    write_imagenet(root, [])
    assert run_tiny([], root, tiny_checkpoint) == 1
    _one_line_error(capsys, "val.txt lists no images")


def test_missing_annotation_file(tiny_checkpoint, tmp_path, capsys, no_model_work):
    root = tmp_path / "imagenet"
    write_imagenet(root, [1, 2])
    (root / "meta" / "val.txt").unlink()
    assert run_tiny([], root, tiny_checkpoint) == 1
    _one_line_error(capsys, "annotation file", "val.txt does not exist")


def test_missing_data_root(tiny_checkpoint, tmp_path, capsys, no_model_work):
    assert run_tiny([], tmp_path / "nowhere", tiny_checkpoint) == 1
    _one_line_error(capsys, "data root", "nowhere does not exist")


def test_missing_config(tiny_checkpoint, tmp_path, capsys, no_model_work):
    assert main([str(tmp_path / "no-such-config.py"), str(tiny_checkpoint)]) == 1
    _one_line_error(capsys, "config file not found", "no-such-config.py")
    assert cli_main(["test", str(tmp_path / "no-such-config.py"), str(tiny_checkpoint)]) == 1
    assert capsys.readouterr().err.startswith("davit test: error: config file not found")


def test_missing_checkpoint(tiny_data, tmp_path, capsys, no_model_work):
    root, _, _ = tiny_data
    assert run_tiny([], root, tmp_path / "absent.pth") == 1
    _one_line_error(capsys, "absent.pth", "neither a file")


def test_checkpoint_that_does_not_fit_the_architecture(tiny_checkpoint, tiny_data, capsys,
                                                       monkeypatch):
    root, _, _ = tiny_data
    monkeypatch.setattr(evaluate, "predict", lambda *a, **k: pytest.fail("evaluation started"))
    code = main([str(REPO / CONFIG), str(tiny_checkpoint), "--device", "cpu", "--cfg-options",
                 f"test_dataloader.dataset.data_root={root}"])
    assert code == 1
    _one_line_error(capsys, "does not fit the model", "embed_dims=[96, 192, 384, 768]")


@pytest.mark.parametrize("override, phrase", [
    ("model.backbone.arch='nano'", "unknown DaViT architecture 'nano'"),
    ("model.head.in_channels=100", "set model.head.in_channels=64"),
    ("test_dataloader.dataset.pipeline.1.backend=cv2", "use backend='pillow'"),
    ("data_preprocessor.to_rgb=False", "set data_preprocessor.to_rgb=True"),
    ("test_evaluator.topk=(0,1)", "test_evaluator.topk must be a positive integer or a list of them"),
])
def test_config_the_evaluator_cannot_honour(override, phrase, tiny_checkpoint, tiny_data, capsys,
                                            no_model_work):
    root, _, _ = tiny_data
    assert run_tiny([], root, tiny_checkpoint, (override,)) == 1
    _one_line_error(capsys, phrase)


def _broken_images(root: Path) -> list[Path]:
    """Replace three of the images listed in ``root``: truncated, not an image, and missing."""
    val = root / "val"
    data = (val / "img_0.jpg").read_bytes()
    (val / "img_0.jpg").write_bytes(data[: len(data) // 2])
    (val / "img_1.jpg").write_bytes(b"this is not an image")
    (val / "img_4.jpg").unlink()
    return [val / "img_0.jpg", val / "img_1.jpg", val / "img_4.jpg"]


def test_unreadable_images_are_counted_not_fatal(tiny_checkpoint, tmp_path, capsys):
    root = tmp_path / "imagenet"
    write_imagenet(root, [3, 7, 3, 7, 1, 0, 3])
    broken = _broken_images(root)
    out = tmp_path / "pred.json"
    assert run_tiny(["--work-dir", str(tmp_path / "w"), "--out", str(out), "--num-workers", "0"],
                    root, tiny_checkpoint) == 0
    captured = capsys.readouterr()
    assert "evaluated 4 images, failed 3" in captured.out
    for path in broken:
        assert str(path) in captured.err
    metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert (metrics["evaluated"], metrics["failed"]) == (4, 3)
    assert sorted(item["path"] for item in metrics["failed_images"]) == sorted(map(str, broken))
    records = json.loads(out.read_text())
    assert [("error" in r) for r in records] == [True, True, False, False, True, False, False]
    good = [r for r in records if "error" not in r]
    assert metrics["accuracy/top1"] == 100.0 * sum(r["pred_label"] == r["gt_label"] for r in good) / 4

    assert run_tiny(["--strict", "--num-workers", "0"], root, tiny_checkpoint) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("tools/test.py: error: ") and str(broken[0]) in last and "--strict" in last


def test_class_folder_dataset(tiny_checkpoint, tmp_path):
    root = tmp_path / "my_photos"
    photos = _photos()
    for i, photo in enumerate(photos):
        folder = root / ("cats" if i % 2 == 0 else "cups") / ("sub" if i == 6 else "")
        folder.mkdir(parents=True, exist_ok=True)
        photo.save(folder / f"p{i}.jpg")
    (root / "cups" / "notes.txt").write_text("not an image")
    out = tmp_path / "pred.json"
    options = ("test_dataloader.dataset.type=CustomDataset", "test_dataloader.dataset.split=",
               "test_dataloader.dataset.ann_file=", "test_dataloader.dataset.data_prefix=")
    assert run_tiny(["--work-dir", str(tmp_path / "w"), "--out", str(out), "--num-workers", "0",
                     "--confusion-matrix", "--amp", "bf16"], root, tiny_checkpoint, options) == 0
    records = json.loads(out.read_text())
    assert len(records) == 7
    assert {Path(r["image"]).relative_to(root).parts[0]: r["gt_label"] for r in records} == \
           {"cats": 0, "cups": 1}
    csv_text = (tmp_path / "w" / "per_class_accuracy.csv").read_text()
    assert "0,cats,4,0," in csv_text and "1,cups,3,0," in csv_text
    assert (tmp_path / "w" / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")


def test_imagenet_synset_folders_keep_imagenet_labels(tmp_path):
    synsets = imagenet_synsets()
    for label in (281, 967):
        (tmp_path / synsets[label]).mkdir()
        _photos()[0].save(tmp_path / synsets[label] / "a.JPEG")
    dataset = ClassFolderDataset(tmp_path, build_test_transform(), imagenet_synsets=True)
    assert [label for _, label in dataset.samples] == [281, 967]
    assert dataset.classes[281] == "tabby, tabby cat"
    assert dataset[0].image.shape == (3, 224, 224)


def test_confusion_matrix_shows_most_confused_of_many_classes(tmp_path):
    records = [{"gt_label": i, "pred_label": (i + 1) % 50 if i < 5 else i} for i in range(50)]
    path = tmp_path / "cm.png"
    reports.save_confusion_matrix(records, None, None, path, max_classes=8)
    assert path.read_bytes().startswith(b"\x89PNG")


MMPRETRAIN_PYTHON = Path(os.environ.get("DAVIT_MMPRETRAIN_PYTHON", "/work/mmpre-venv/bin/python"))
_DUMP_MMPRETRAIN = """
import json, pickle, sys
rows = []
for result in pickle.load(open(sys.argv[1], "rb")):
    top = result["pred_score"].topk(5)
    rows.append({"pred_label": int(result["pred_label"]), "topk_labels": top.indices.tolist(),
                 "topk_scores": top.values.tolist()})
json.dump(rows, open(sys.argv[2], "w"))
"""


@pytest.mark.skipif(not MMPRETRAIN_PYTHON.exists(),
                    reason="set DAVIT_MMPRETRAIN_PYTHON to an mmpretrain 1.x environment's python")
def test_same_metrics_and_predictions_as_mmpretrain(tmp_path, capsys):
    """mmpretrain's own tools/test.py and config on the same checkpoint and images give the same
    metrics and per-image predictions as tools/test.py --semantics mmpretrain."""
    torch.manual_seed(1)
    model = DaViTClassifier("tiny", semantics="mmpretrain")
    with torch.no_grad():
        model.head.fc.weight.mul_(20)
    checkpoint = tmp_path / "tiny.pth"
    torch.save({"state_dict": from_davit(model.state_dict(), "mmpretrain")}, checkpoint)
    root = tmp_path / "imagenet"
    paths = write_imagenet(root, [0] * 5)
    # labels chosen so that top-1 and top-5 are neither 0 nor 100 %: ranks 1, 3, none, 1, 5
    tops = [r["pred_scores"].argsort()[::-1][:5] for r in inference_model(model, [str(p) for p in paths])]
    labels = [tops[0][0], tops[1][2], next(c for c in range(1000) if c not in tops[2]), tops[3][0], tops[4][4]]
    (root / "meta" / "val.txt").write_text("".join(f"{p.name} {label}\n" for p, label in zip(paths, labels)))

    found = subprocess.run([str(MMPRETRAIN_PYTHON), "-c", "import mmpretrain, os; "
                            "print(os.path.dirname(mmpretrain.__file__))"],
                           capture_output=True, text=True, check=True)
    mim = Path(found.stdout.strip()) / ".mim"
    done = subprocess.run(
        [str(MMPRETRAIN_PYTHON), str(mim / "tools" / "test.py"),
         str(mim / "configs" / "davit" / "davit-tiny_4xb256_in1k.py"), str(checkpoint),
         "--work-dir", str(tmp_path / "mm"), "--out", str(tmp_path / "mm.pkl"), "--cfg-options",
         f"test_dataloader.dataset.data_root={root}", "test_dataloader.num_workers=0"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    subprocess.run([str(MMPRETRAIN_PYTHON), "-c", _DUMP_MMPRETRAIN, str(tmp_path / "mm.pkl"),
                    str(tmp_path / "mm.json")], check=True)
    mm_log = done.stdout + done.stderr

    assert main([str(REPO / CONFIG), str(checkpoint), "--semantics", "mmpretrain", "--device", "cpu",
                 "--num-workers", "0", "--work-dir", str(tmp_path / "ours"), "--out",
                 str(tmp_path / "ours.json"), "--cfg-options",
                 f"test_dataloader.dataset.data_root={root}"]) == 0
    ours_log = capsys.readouterr().out
    assert "accuracy/top1: 40.0000  accuracy/top5: 80.0000" in ours_log
    assert "accuracy/top1: 40.0000  accuracy/top5: 80.0000" in mm_log
    theirs = json.loads((tmp_path / "mm.json").read_text())
    ours = json.loads((tmp_path / "ours.json").read_text())
    for a, b in zip(theirs, ours):
        assert a["pred_label"] == b["pred_label"] and a["topk_labels"] == [t["label"] for t in b["topk"]]
        assert a["topk_scores"] == pytest.approx([t["score"] for t in b["topk"]], abs=1e-5)


def test_an_unwritable_output_is_refused_before_any_image_is_read(tiny_checkpoint, tiny_data, tmp_path, monkeypatch,
                                                                   capsys):
    root, _, _ = tiny_data
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    monkeypatch.setattr(evaluate, "predict", lambda *a, **k: pytest.fail("evaluated before checking --out"))
    assert run_tiny(["--out", str(blocker / "preds.json"), "--work-dir", str(tmp_path / "w")], root,
                    tiny_checkpoint) != 0
    error = capsys.readouterr().err.strip()
    assert f"cannot write in {blocker}" in error and len(error.splitlines()) == 1
