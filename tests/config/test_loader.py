from pathlib import Path

import pytest

from davit.config import ConfigError, dump_config, format_config, load_config
from tests.paths import REPO

CONFIGS = REPO / "configs"
SEEDS = {
    "tiny": ("davit-tiny_4xb256_in1k.py", 0.1, 768),
    "small": ("davit-small_4xb256_in1k.py", 0.2, 768),
    "base": ("davit-base_4xb256_in1k.py", 0.4, 1024),
}


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def child(tmp_path: Path) -> Path:
    write(tmp_path, "base/model.py",
          "model = dict(type='M', backbone=dict(arch='tiny', depth=4), head=dict(n=10))\n"
          "pipeline = [dict(type='A'), dict(type='B', size=(224, 224))]\n")
    write(tmp_path, "base/runtime.py", "import os\nseed = 1\nflags = dict(a=1, b=2)\n"
                                      "def helper():\n    return 1\n")
    return write(tmp_path, "child.py",
                 "_base_ = ['base/model.py', 'base/runtime.py']\n"
                 "model = dict(backbone=dict(depth=8, extra=True))\n"
                 "flags = dict(_delete_=True, c=3)\n"
                 "pipeline = [dict(type='C')]\n"
                 "_private = 5\n")


@pytest.mark.parametrize("size", list(SEEDS))
def test_seed_configs(size: str) -> None:
    name, drop_path_rate, in_channels = SEEDS[size]
    cfg = load_config(CONFIGS / "davit" / name)
    model = cfg["model"]
    assert model["semantics"] == "mmpretrain"  # the seed configs reproduce mmpretrain's numbers
    assert model["backbone"] == dict(type="DaViT", arch=size, out_indices=(3,),
                                     drop_path_rate=drop_path_rate)
    assert model["head"]["in_channels"] == in_channels
    assert model["head"]["topk"] == (1, 5)
    assert model["train_cfg"]["augments"][1] == dict(type="CutMix", alpha=1.0)

    optimizer = cfg["optim_wrapper"]["optimizer"]
    assert optimizer["type"] == "AdamW"
    assert optimizer["lr"] == pytest.approx(1e-3)
    assert optimizer["weight_decay"] == 0.05
    assert optimizer["betas"] == (0.9, 0.999)
    warmup, cosine = cfg["param_scheduler"]
    assert (warmup["type"], warmup["end"], cosine["begin"]) == ("LinearLR", 20, 20)
    assert cfg["train_cfg"]["max_epochs"] == 300
    assert cfg["auto_scale_lr"] == dict(base_batch_size=1024)

    assert cfg["train_dataloader"]["batch_size"] == 256
    assert cfg["train_dataloader"]["dataset"]["data_root"] == "data/imagenet"
    erasing = cfg["train_pipeline"][4]
    assert erasing["fill_color"] == [103.53, 116.28, 123.675]
    assert erasing["max_area_ratio"] == pytest.approx(1 / 3)
    assert cfg["train_pipeline"][3]["hparams"]["pad_val"] == [104, 116, 124]
    test_pipeline = cfg["test_dataloader"]["dataset"]["pipeline"]
    assert test_pipeline[1]["type"] == "ResizeEdge" and test_pipeline[1]["scale"] == 236
    assert test_pipeline[2] == dict(type="CenterCrop", crop_size=224)
    assert cfg["test_dataloader"] == cfg["val_dataloader"]
    assert cfg["test_dataloader"]["batch_size"] == 64
    assert cfg["test_dataloader"]["dataset"]["ann_file"] == "meta/val.txt"
    assert cfg["default_scope"] == "davit"
    assert cfg["default_hooks"]["checkpoint"]["max_keep_ckpts"] == 0  # latest.pth + best.pth only
    assert cfg["default_hooks"]["checkpoint"]["save_best"] == "auto"


def test_config_values_are_not_shared() -> None:
    cfg = load_config(CONFIGS / "davit" / SEEDS["tiny"][0], ["val_dataloader.batch_size=8"])
    assert cfg["val_dataloader"]["batch_size"] == 8
    assert cfg["test_dataloader"]["batch_size"] == 64


def test_base_merge(child: Path) -> None:
    cfg = load_config(child)
    assert list(cfg) == ["model", "pipeline", "seed", "flags"]
    assert cfg["model"] == dict(type="M", backbone=dict(arch="tiny", depth=8, extra=True),
                                head=dict(n=10))
    assert cfg["flags"] == dict(c=3)
    assert cfg["pipeline"] == [dict(type="C")]
    assert cfg["seed"] == 1


def test_base_as_single_string_and_nested_delete_is_stripped(tmp_path: Path) -> None:
    write(tmp_path, "a.py", "x = dict(y=1)\n")
    path = write(tmp_path, "b.py", "_base_ = 'a.py'\nx = dict(z=dict(_delete_=True, w=1))\n")
    assert load_config(path) == dict(x=dict(y=1, z=dict(w=1)))


def test_duplicate_key_across_bases(tmp_path: Path) -> None:
    write(tmp_path, "a.py", "x = 1\n")
    write(tmp_path, "b.py", "x = 2\n")
    path = write(tmp_path, "c.py", "_base_ = ['a.py', 'b.py']\n")
    with pytest.raises(ConfigError, match="'x'.*a.py.*b.py"):
        load_config(path)


def test_base_cycle(tmp_path: Path) -> None:
    write(tmp_path, "a.py", "_base_ = ['b.py']\n")
    path = write(tmp_path, "b.py", "_base_ = ['a.py']\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(path)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.py"):
        load_config(tmp_path / "nope.py")
    path = write(tmp_path, "child.py", "_base_ = ['gone.py']\n")
    with pytest.raises(ConfigError, match=r"'gone.py' referenced by .*child.py"):
        load_config(path)


def test_errors_name_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.py", "x = 1\ny = (\n")
    with pytest.raises(ConfigError, match=r"bad.py, line 2"):
        load_config(path)
    path = write(tmp_path, "raises.py", "x = 1\n\ny = 1 / 0\n")
    with pytest.raises(ConfigError, match=r"raises.py, line 3.*ZeroDivisionError"):
        load_config(path)
    path = write(tmp_path, "set.py", "x = dict(y={1, 2})\n")
    with pytest.raises(ConfigError, match=r"x.y holds a value of type set"):
        load_config(path)


def test_overrides(child: Path) -> None:
    cfg = load_config(child, [
        "model.backbone.arch=base",
        "model.head.n=1e-3",
        "pipeline.0.type=D",
        "seed=none",
        "+model.neck.kind=[1, true]",
        "+extra=1,2",
    ])
    assert cfg["model"]["backbone"]["arch"] == "base"
    assert cfg["model"]["head"]["n"] == 0.001
    assert cfg["pipeline"] == [dict(type="D")]
    assert cfg["seed"] is None
    assert cfg["model"]["neck"] == dict(kind=[1, True])
    assert cfg["extra"] == [1, 2]


@pytest.mark.parametrize("text, value", [
    ("1", 1), ("-0.5", -0.5), ("True", True), ("FALSE", False), ("None", None),
    ("[1,2]", [1, 2]), ("1,2", [1, 2]), ("(1,2)", (1, 2)), ("(1,2),(3,4)", [(1, 2), (3, 4)]),
    ("'x,y'", "x,y"), ("pillow", "pillow"), ("data/imagenet", "data/imagenet"), ("", ""),
    ("[a, b]", ["a", "b"]), ("{'k': none}", {"k": None}),
])
def test_override_literals(child: Path, text: str, value: object) -> None:
    assert load_config(child, [f"seed={text}"])["seed"] == value


def test_override_into_tuple_keeps_tuple(tmp_path: Path) -> None:
    path = write(tmp_path, "a.py", "size = (224, 224)\n")
    assert load_config(path, ["size.1=256"])["size"] == (224, 256)


def test_dict_overrides(child: Path) -> None:
    value = [1, 2]
    cfg = load_config(child, {"model.head.n": value, "+new": "1,2"})
    assert cfg["model"]["head"]["n"] == [1, 2] and cfg["model"]["head"]["n"] is not value
    assert cfg["new"] == "1,2"


@pytest.mark.parametrize("override, message", [
    ("model.backbone.arc=base", r"model.backbone.arc.*did you mean model.backbone.arch\?"),
    ("model.backbon.arch=base", r"'model.backbon' does not exist.*model.backbone\b"),
    ("modle.head.n=1", r"did you mean model\?.*'\+'"),
    ("zzz=1", r"existing keys: model, pipeline, seed, flags"),
    ("pipeline.5.type=X", r"'pipeline' is a list of length 1"),
    ("pipeline.first.type=X", r"'first' is not a valid index"),
    ("seed.x=1", r"'seed' is 1, not a dict"),
    ("+seed.x=1", r"'seed' is 1, not a dict"),
    ("model.backbone.arch", r"not of the form key=value"),
    ("model..arch=1", r"malformed override key"),
    ("seed={1, 2}", r"seed holds a value of type set"),
])
def test_override_errors(child: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(child, [override])


@pytest.mark.parametrize("size", list(SEEDS))
def test_dump_round_trip(tmp_path: Path, size: str) -> None:
    cfg = load_config(CONFIGS / "davit" / SEEDS[size][0], ["+model.note='a, b'"])
    path = tmp_path / "out" / "dumped.py"
    dump_config(cfg, path)
    assert path.read_text() == format_config(cfg)
    assert load_config(path) == cfg


def test_format_rejects_bad_keys() -> None:
    with pytest.raises(ConfigError, match="public Python identifier"):
        format_config({"not-a-name": 1})
    with pytest.raises(ConfigError, match="type set"):
        format_config({"x": {1}})
