"""tools/train.py: real learning on scikit-learn's digits, exact resume, fine-tuning, torchrun,
signals and bad input. Small models, 32x32 images and few epochs keep it to a few minutes on CPU."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from davit import get_model
from davit.cli.app import run_subcommand
from davit.config import load_config
from davit.data.train_transforms import build_train_transform
from davit.engine.optim import build_optimizer, build_scheduler, scaled_lr
from davit.engine.sampling import SeededDataset, TrainSampler, sample_seed
from davit.model import DaViTClassifier
from tests.helpers import torch_threads
from tests.paths import REPO

DIGITS_CONFIG = REPO / "configs" / "davit" / "davit-digits_1xb64.py"
FINETUNE_CONFIG = REPO / "configs" / "davit" / "davit-tiny_finetune_custom.py"
TINY_ARCH = {"embed_dims": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 2],
             "window_size": 4}
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train(argv: list[str]) -> int:
    """``python tools/train.py ARGV``, in this process."""
    return run_subcommand("train", argv, prog="tools/train.py")


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def _prepare_digits():
    """tools/prepare_digits.py, which writes the images the digits config reads."""
    spec = importlib.util.spec_from_file_location("prepare_digits", REPO / "tools" / "prepare_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    pytest.importorskip("sklearn")
    root = tmp_path_factory.mktemp("digits")
    assert _prepare_digits().main(["--out", str(root)]) == 0
    assert len(list(root.glob("train/*/*.png"))) == 1437 and len(list(root.glob("test/*/*.png"))) == 360
    return root


def _colour_folder(root: Path, per_class: int, seed: int = 0) -> Path:
    """Three classes of 32x32 images, each a noisy patch of its class's colour."""
    rng = np.random.default_rng(seed)
    for label, colour in enumerate(COLOURS):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (32, 32, 3)) + np.array(colour) * rng.uniform(0.6, 1.0)
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture
def colours(tmp_path) -> Path:
    _colour_folder(tmp_path / "data" / "train", per_class=8)
    _colour_folder(tmp_path / "data" / "val", per_class=2, seed=1)
    return tmp_path / "data"


def _tiny_config(path: Path, data: Path, **extra: str) -> Path:
    """A config with the whole DaViT recipe (RandAugment, RandomErasing, Mixup/CutMix, label
    smoothing, drop path, AdamW with warm-up and cosine) on a tiny model and 32x32 images."""
    text = f"""
_base_ = [{str(REPO / 'configs/_base_/default_runtime.py')!r}]
model = dict(type='ImageClassifier',
             backbone=dict(type='DaViT', arch={TINY_ARCH!r}, drop_path_rate=0.1),
             neck=dict(type='GlobalAveragePooling'),
             head=dict(type='LinearClsHead', num_classes=3, in_channels=16,
                       loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')),
             train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))
data_preprocessor = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=32, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10,
         magnitude_level=9, magnitude_std=0.5, hparams=dict(pad_val=[104, 116, 124], interpolation='bicubic')),
    dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02, max_area_ratio=1 / 3,
         fill_color=[103.53, 116.28, 123.675], fill_std=[57.375, 57.12, 58.395]),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'),
                 dict(type='ResizeEdge', scale=32, edge='short', backend='pillow', interpolation='bicubic'),
                 dict(type='CenterCrop', crop_size=32), dict(type='PackInputs')]
train_dataloader = dict(batch_size=4, num_workers=0,
                        dataset=dict(type='CustomDataset', data_root={str(data / 'train')!r}, pipeline=train_pipeline))
val_dataloader = dict(batch_size=8, num_workers=0,
                      dataset=dict(type='CustomDataset', data_root={str(data / 'val')!r}, pipeline=test_pipeline))
val_evaluator = dict(type='Accuracy', topk=(1, 5))
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
                     paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0))
param_scheduler = [dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=1, convert_to_iter_based=True),
                   dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1)]
train_cfg = dict(by_epoch=True, max_epochs=3, val_interval=1)
auto_scale_lr = dict(base_batch_size=4)
default_hooks = dict(logger=dict(interval=2), checkpoint=dict(interval=1, max_keep_ckpts=-1))
"""
    for key, value in extra.items():
        text += f"{key} = {value}\n"
    path.write_text(text)
    return path


def _records(work_dir: Path, mode: str) -> list[dict]:
    lines = (work_dir / "scalars.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["mode"] == mode]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _digits_args(digits: Path, work_dir: Path, *more: str) -> list[str]:
    return [str(DIGITS_CONFIG), "--work-dir", str(work_dir), "--device", "cpu", "--cfg-options",
            f"train_dataloader.dataset.data_root={digits / 'train'}",
            f"val_dataloader.dataset.data_root={digits / 'test'}", *more]


# -- real learning ---------------------------------------------------------------------------

@pytest.mark.slow
def test_digits_reach_90_percent_and_write_every_record(digits, tmp_path, capsys):
    work = tmp_path / "work"
    assert train(_digits_args(digits, work, "train_cfg.max_epochs=4")) == 0
    val = _records(work, "val")
    assert [r["epoch"] for r in val] == [1, 2, 3, 4]
    assert val[-1]["accuracy/top1"] >= 90.0, val
    train_records = _records(work, "train")
    assert train_records and all(k in train_records[0] for k in ("loss", "lr", "images_per_s", "eta_s"))
    assert sorted(p.name for p in work.glob("*.pth")) == ["best.pth", "latest.pth"]  # the default retention
    assert (work / "curves.png").stat().st_size > 10_000
    assert (work / "train.log").read_text().count("Epoch(val)") == 4
    assert load_config(work / DIGITS_CONFIG.name)["randomness"]["seed"] == 0
    if importlib.util.find_spec("tensorboard"):
        assert list((work / "tensorboard").glob("events.out.tfevents.*"))
    assert "Epoch(val) [4/4]" in capsys.readouterr().out

    latest = _load(work / "latest.pth")
    assert latest["epoch"] == 4 and latest["epoch_iter"] == 0 and latest["iteration"] == 4 * 23
    assert {"optimizer", "scheduler", "scaler", "rng", "state_dict_ema", "meta"} <= set(latest)
    best = _load(work / "best.pth")
    assert not {"optimizer", "scheduler", "scaler", "rng"} & set(best)  # what inference needs only
    assert best["metrics"]["accuracy/top1"] == max(r["accuracy/top1"] for r in val)
    arch = load_config(DIGITS_CONFIG)["model"]["backbone"]["arch"]
    assert get_model(arch, pretrained=str(work / "best.pth")).num_classes == 10

    # The checkpoint evaluates with tools/test.py to the accuracy the run logged.
    assert run_subcommand("test", [str(work / DIGITS_CONFIG.name), str(work / "latest.pth"),
                                   "--device", "cpu", "--work-dir", str(tmp_path / "test"),
                                   "--cfg-options",
                                   f"test_dataloader.dataset.data_root={digits / 'test'}"]) == 0
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert metrics["accuracy/top1"] == pytest.approx(val[-1]["accuracy/top1"])


@pytest.mark.slow
def test_torchrun_two_processes_train_once(digits, tmp_path):
    work = tmp_path / "work"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               str(REPO / "tools" / "train.py"),
               *_digits_args(digits, work, "train_cfg.max_epochs=4", "train_dataloader.batch_size=32")]
    done = subprocess.run(command, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done: 4 epochs") == 1
    assert "2 process(es) on cpu, 64 images per step" in done.stdout
    assert (work / "train.log").read_text().count("Epoch(val) [4/4]") == 1
    val = _records(work, "val")
    assert [r["epoch"] for r in val] == [1, 2, 3, 4]
    assert val[-1]["accuracy/top1"] >= 90.0, val
    steps = [r["step"] for r in _records(work, "train")]
    assert steps == sorted(set(steps))
    assert sorted(p.name for p in work.glob("*.pth")) == ["best.pth", "latest.pth"]  # the default retention
    latest = _load(work / "latest.pth")
    assert latest["iteration"] == 4 * 23 and len(latest["rng"]) == 2


# -- resume, fine-tuning ---------------------------------------------------------------------

def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_resume_is_exact(colours, tmp_path):
    config = _tiny_config(tmp_path / "tiny.py", colours)
    options = ["--device", "cpu", "--deterministic", "--seed", "3", "--ema", "0.9",
               "--accumulate", "2", "--clip-grad", "1.0", "--checkpoint-iters", "2"]
    full = tmp_path / "full"
    assert train([str(config), "--work-dir", str(full), *options]) == 0
    # Three steps of two batches per epoch: iter_4.pth is in the middle of epoch 2.
    for name, workers in (("epoch_1.pth", "0"), ("iter_4.pth", "2")):
        resumed = tmp_path / f"from_{name}"
        assert train([str(config), "--work-dir", str(resumed), "--resume", str(full / name), *options,
                      "--cfg-options", f"train_dataloader.num_workers={workers}"]) == 0
        a, b = _load(full / "latest.pth"), _load(resumed / "latest.pth")
        assert b["iteration"] == a["iteration"] == 9
        _same_state(a["state_dict"], b["state_dict"])
        _same_state(a["state_dict_ema"], b["state_dict_ema"])
        for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
            _same_state(state_a, state_b)
        assert _records(resumed, "val")[-1] == _records(full, "val")[-1]
        assert a["metrics"] == b["metrics"]


def test_finetune_from_a_checkpoint_with_other_classes(colours, tmp_path, capsys):
    pretrained = DaViTClassifier(TINY_ARCH, num_classes=5)
    torch.save({"state_dict": pretrained.state_dict()}, tmp_path / "pretrained.pth")
    work = tmp_path / "work"
    # The ready fine-tuning config, shrunk to the tiny model and 32x32 images.
    assert train([str(FINETUNE_CONFIG), "--work-dir", str(work), "--device", "cpu", "--amp", "bf16",
                  "--cfg-options", f"model.backbone.arch={TINY_ARCH!r}", "model.head.in_channels=16",
                  "model.backbone.frozen_stages=1", f"load_from={tmp_path / 'pretrained.pth'}",
                  f"train_dataloader.dataset.data_root={colours / 'train'}",
                  f"val_dataloader.dataset.data_root={colours / 'val'}",
                  "train_dataloader.batch_size=8", "train_dataloader.num_workers=0",
                  "val_dataloader.num_workers=0", "train_dataloader.dataset.pipeline.1.scale=32",
                  "val_dataloader.dataset.pipeline.1.scale=32",
                  "val_dataloader.dataset.pipeline.2.crop_size=32", "train_cfg.max_epochs=2",
                  "default_hooks.checkpoint.max_keep_ckpts=None"]) == 0
    out = capsys.readouterr().out
    # Without max_keep_ckpts: the resumable latest.pth and the weights-only best.pth, no epoch_N.
    assert sorted(p.name for p in work.glob("*.pth")) == ["best.pth", "latest.pth"]
    best = _load(work / "best.pth")
    assert not {"optimizer", "scheduler", "rng", "scaler"} & set(best) and "meta" in best
    assert (work / "best.pth").stat().st_ino != (work / "latest.pth").stat().st_ino
    assert {"optimizer", "scheduler", "rng"} <= set(_load(work / "latest.pth"))
    assert get_model(str(work / "best.pth")).num_classes == 3
    assert "using the 3 classes of the training set" in out
    assert out.count("val_evaluator.topk 5 is more than the model's 3 classes: reporting top-1 only") == 1
    state = _load(work / "latest.pth")["state_dict"]
    assert state["head.fc.weight"].shape == (3, 16)
    before = pretrained.state_dict()
    frozen = [k for k in before if k.startswith(("backbone.stem.", "backbone.stages.0."))]
    trained = [k for k in before if k.startswith("backbone.stages.3.") and k.endswith("weight")]
    assert all(torch.equal(state[k], before[k]) for k in frozen)
    assert not any(torch.equal(state[k], before[k]) for k in trained)
    # The saved config is the config as run: tools/test.py evaluates best.pth on the user's
    # validation data (test = val) with the trained class count, with no options.
    dumped = load_config(work / FINETUNE_CONFIG.name)
    assert dumped["model"]["head"]["num_classes"] == 3
    assert dumped["load_from"] == str(tmp_path / "pretrained.pth")
    assert dumped["test_dataloader"]["dataset"]["data_root"] == str(colours / "val")
    for section in (dumped.get("data_preprocessor"), dumped["model"].get("data_preprocessor")):
        assert not isinstance(section, dict) or section.get("num_classes", 3) == 3
    # (The accuracy itself is not compared: the 2-epoch model's logits are so close that bf16
    # under another thread count flips some of the 6 predictions.)
    assert run_subcommand("test", [str(work / FINETUNE_CONFIG.name), str(work / "best.pth"),
                                   "--device", "cpu", "--work-dir", str(tmp_path / "test")]) == 0
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert metrics["evaluated"] == 6 and metrics["failed"] == 0
    per_class = (tmp_path / "test" / "per_class_accuracy.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in per_class[1:]] == ["class_0", "class_1", "class_2"]
    # --resume auto continues from latest.pth (best.pth is not a resumable state).
    assert train([str(work / FINETUNE_CONFIG.name), "--work-dir", str(work), "--device", "cpu",
                  "--resume", "auto", "--cfg-options", "train_cfg.max_epochs=3"]) == 0
    assert _load(work / "latest.pth")["epoch"] == 3
    assert sorted(p.name for p in work.glob("*.pth")) == ["best.pth", "latest.pth"]


def test_from_scratch_is_logged_and_a_bad_load_from_names_the_way_out(colours, tmp_path, capsys):
    config = _tiny_config(tmp_path / "tiny.py", colours, train_cfg="dict(max_epochs=1)")
    code, out = _run([str(config), "--work-dir", str(tmp_path / "w"), "--device", "cpu"], capsys)
    assert code == 0 and out.count("training starts from random weights") == 1
    code, out = _run([str(config), "--work-dir", str(tmp_path / "w2"), "--device", "cpu",
                      "--cfg-options", f"load_from={tmp_path / 'missing.pth'}"], capsys)
    assert code == 1 and "--cfg-options load_from=None" in out and "Traceback" not in out
    # A download that fails (offline; here a refused local port) says the same.
    code, out = _run([str(config), "--work-dir", str(tmp_path / "w3"), "--device", "cpu",
                      "--cfg-options", "load_from=http://127.0.0.1:9/davit-tiny.pth"], capsys)
    assert code == 1 and "could not download" in out and "--cfg-options load_from=None" in out


def test_an_empty_class_folder_and_differing_class_folders(colours, tmp_path, capsys):
    config = _tiny_config(tmp_path / "tiny.py", colours)
    (colours / "train" / "class_9").mkdir()
    code, out = _run([str(config), "--work-dir", str(tmp_path / "w"), "--device", "cpu"], capsys)
    assert code == 1 and str(colours / "train" / "class_9") in out and "hold no images" in out
    (colours / "train" / "class_9").rmdir()
    (colours / "val" / "class_2").rename(colours / "val" / "class_x")
    code, out = _run([str(config), "--work-dir", str(tmp_path / "w"), "--device", "cpu"], capsys)
    assert code == 1 and "only in validation: class_x; only in training: class_2" in out


def test_the_digits_config_reads_what_prepare_digits_writes():
    cfg = load_config(DIGITS_CONFIG)
    out = _prepare_digits().DEFAULT_OUT
    assert cfg["train_dataloader"]["dataset"]["data_root"] == f"{out}/train"
    assert cfg["val_dataloader"]["dataset"]["data_root"] == f"{out}/test"


def test_recipe_optimizer_and_schedule():
    cfg = load_config(REPO / "configs" / "davit" / "davit-tiny_4xb256_in1k.py")
    assert scaled_lr(cfg["optim_wrapper"], cfg["auto_scale_lr"], 4 * 256) == pytest.approx(1e-3)
    lr = scaled_lr(cfg["optim_wrapper"], cfg["auto_scale_lr"], 256)
    assert lr == pytest.approx(2.5e-4)
    model = DaViTClassifier("tiny", num_classes=10)
    optimizer = build_optimizer(model, cfg["optim_wrapper"], lr)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {n for n, p in model.named_parameters() if p.ndim > 1}  # no norms, biases
    assert all(g["weight_decay"] in (0.0, 0.05) for g in optimizer.param_groups)
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-8

    steps = 10
    scheduler = build_scheduler(optimizer, cfg["param_scheduler"], steps, 300, lr)
    schedule = scheduler.lr_lambdas[0]
    assert schedule(0) == pytest.approx(1e-3)
    assert schedule(10 * steps) == pytest.approx(1e-3 + (1 - 1e-3) / 2)
    assert schedule(20 * steps) == pytest.approx(1.0)
    assert schedule(20 * steps + 5) == pytest.approx(1.0)  # the cosine moves once per epoch
    assert schedule(300 * steps - 1) * lr == pytest.approx(1e-5, rel=1e-2)


def test_recipe_train_transform():
    cfg = load_config(REPO / "configs" / "davit" / "davit-tiny_4xb256_in1k.py")
    pre = cfg["data_preprocessor"]
    transform = build_train_transform(cfg["train_pipeline"], pre["mean"], pre["std"])
    assert "RandAugment" in repr(transform) and transform.erasing.value is None  # N(0, 1) fill
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    x = transform(image)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and -3 < x.mean() < 3


def test_sampler_shards_and_seeds(colours):
    from davit.data.datasets import ClassFolderDataset

    dataset = ClassFolderDataset(colours / "train", transform=lambda p: torch.zeros(1))
    shards = [list(TrainSampler(dataset, 2, rank, seed=5)) for rank in (0, 1)]
    assert sorted(i for shard in shards for i, _ in shard) == list(range(24))
    sampler = TrainSampler(dataset, 1, 0, seed=5)
    sampler.set_epoch(1)
    sampler.set_start(10)
    assert len(sampler) == 14 and all(s == sample_seed(5, 1, i) for i, s in sampler)
    assert len({sample_seed(5, e, i) for e in range(3) for i in range(24)}) == 72
    assert SeededDataset(dataset)[(3, 7)][1] == 0


# -- bad input ---------------------------------------------------------------------------------

def _run(args: list[str], capsys) -> tuple[int, str]:
    code = train(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_dataset_without_images(colours, tmp_path, capsys):
    config = _tiny_config(tmp_path / "tiny.py", colours)
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    code, out = _run([str(config), "--work-dir", str(tmp_path / "w"), "--device", "cpu", "--cfg-options",
                      f"train_dataloader.dataset.data_root={tmp_path / 'empty'}"], capsys)
    assert code == 1 and "found no images" in out and "Traceback" not in out
    (tmp_path / "flat").mkdir()
    code, out = _run([str(config), "--work-dir", str(tmp_path / "w"), "--device", "cpu", "--cfg-options",
                      f"train_dataloader.dataset.data_root={tmp_path / 'flat'}"], capsys)
    assert code == 1 and "has no class sub-folders" in out and "train_dataloader" in out


def test_unreadable_images_are_reported_skipped_and_counted(colours, tmp_path, capsys):
    broken = colours / "train" / "class_1"
    (broken / "not_an_image.png").write_text("hello")
    truncated = (broken / "0.png").read_bytes()[:60]
    (broken / "truncated.png").write_bytes(truncated)
    config = _tiny_config(tmp_path / "tiny.py", colours)
    code, out = _run([str(config), "--work-dir", str(tmp_path / "w"), "--device", "cpu",
                      "--cfg-options", "train_cfg.max_epochs=2"], capsys)
    assert code == 0, out
    assert out.count("skipped an unreadable training image") == 2  # once each, not every epoch
    assert "not_an_image.png" in out and "truncated.png" in out
    assert "2 unreadable training image(s) skipped so far" in out


def test_batch_larger_than_the_dataset(colours, tmp_path, capsys):
    config = _tiny_config(tmp_path / "tiny.py", colours)
    code, out = _run([str(config), "--work-dir", str(tmp_path / "w"), "--device", "cpu",
                      "--cfg-options", "train_dataloader.batch_size=64"], capsys)
    assert code == 1
    assert "batch_size is 64 but the training set has only 24 images" in out
    assert "train_dataloader.batch_size=24" in out


def test_bad_resume_sources(colours, tmp_path, capsys):
    config = _tiny_config(tmp_path / "tiny.py", colours)
    base = [str(config), "--device", "cpu"]
    code, out = _run([*base, "--work-dir", str(tmp_path / "a"), "--resume", str(tmp_path / "nope.pth")], capsys)
    assert code == 1 and "nope.pth does not exist" in out

    weights = tmp_path / "weights.pth"
    torch.save(DaViTClassifier(TINY_ARCH, num_classes=3).state_dict(), weights)
    code, out = _run([*base, "--work-dir", str(tmp_path / "a"), "--resume", str(weights)], capsys)
    assert code == 1 and "no training state" in out and "load_from" in out

    assert train([*base, "--work-dir", str(tmp_path / "a"), "--cfg-options", "train_cfg.max_epochs=1"]) == 0
    other = _tiny_config(tmp_path / "other.py", colours)
    other.write_text(other.read_text().replace("'embed_dims': [8, 16, 16, 16]", "'embed_dims': [8, 16, 16, 32]")
                     .replace("in_channels=16", "in_channels=32"))
    capsys.readouterr()
    code, out = _run([str(other), "--device", "cpu", "--work-dir", str(tmp_path / "b"),
                      "--resume", str(tmp_path / "a" / "latest.pth")], capsys)
    assert code == 1 and "written for another model" in out and "mis-shaped" in out


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_resumable_checkpoint(colours, tmp_path, signum):
    config = _tiny_config(tmp_path / "tiny.py", colours)
    work = tmp_path / "work"
    command = [sys.executable, str(REPO / "tools" / "train.py"), str(config), "--work-dir", str(work),
               "--device", "cpu", "--cfg-options", "train_cfg.max_epochs=500"]
    process = subprocess.Popen(command, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 120
        while not (work / "epoch_1.pth").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert f"stopped by {signal.Signals(signum).name}" in out and "--resume auto" in out
    state = _load(work / "latest.pth")
    assert {"state_dict", "optimizer", "scheduler", "rng", "epoch", "epoch_iter", "iteration"} <= set(state)
    assert state["iteration"] >= 3
    # It resumes from there and finishes (the schedule is cut short to one more epoch).
    epochs = state["epoch"] + 1
    assert train([str(config), "--work-dir", str(work), "--device", "cpu", "--resume",
                  "--cfg-options", f"train_cfg.max_epochs={epochs}"]) == 0
    assert _load(work / "latest.pth")["epoch"] == epochs


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(colours, tmp_path, capsys):
    # Epoch 1 at a sane rate, then a rate of 1e30 from epoch 2 on.
    config = _tiny_config(tmp_path / "tiny.py", colours, param_scheduler=(
        "[dict(type='LinearLR', start_factor=1e-33, end_factor=1.0, by_epoch=True, begin=0, end=1)]"))
    work = tmp_path / "w"
    code, out = _run([str(config), "--work-dir", str(work), "--device", "cpu", "--cfg-options",
                      "optim_wrapper.optimizer.lr=1e30", "train_cfg.max_epochs=3"], capsys)
    assert code == 1
    assert "the training loss became nan at epoch 2" in out or "the training loss became inf at epoch 2" in out
    assert "epoch_1.pth (epoch 1, kept intact)" in out
    assert _load(work / "latest.pth")["epoch"] == 1
    assert not (work / "epoch_2.pth").exists()

