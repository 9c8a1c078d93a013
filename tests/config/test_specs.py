"""Config specs: every value they read is type- and range-checked, with a one-line ConfigError
that names the key, the value and what is expected; top-k above the class count is left out."""
import pytest

from davit.config import ConfigError, data, load_config
from davit.config.specs import evaluator_spec, model_spec, val_evaluator_spec
from davit.config.training import optim_spec, runtime_spec, train_spec
from tests.paths import REPO

DIGITS = REPO / "configs" / "davit" / "davit-digits_1xb64.py"
TINY = REPO / "configs" / "davit" / "davit-tiny_4xb256_in1k.py"


def check_all(cfg: dict) -> None:
    """Every spec a test or training run reads from ``cfg``."""
    runtime_spec(cfg)
    train_spec(cfg)
    for section in ("train_dataloader", "val_dataloader", "test_dataloader"):
        data.loader_spec(data.loader_section(cfg, section), section)
    data.test_transform(cfg)
    data.test_transform(cfg, "val_dataloader")
    data.train_transform(cfg)
    evaluator_spec(cfg, 10)
    val_evaluator_spec(cfg, 10)
    data.batch_augment(cfg, 10)


def test_the_configs_pass() -> None:
    check_all(load_config(DIGITS))
    cfg = load_config(TINY)
    runtime_spec(cfg)
    optim_spec(cfg)
    model_spec(cfg["model"])


@pytest.mark.parametrize("override, message", [
    ("test_dataloader.batch_size=abc", "test_dataloader.batch_size must be a positive integer, got 'abc'"),
    ("test_dataloader.batch_size=0", "test_dataloader.batch_size must be a positive integer, got 0"),
    ("test_dataloader.num_workers=x", "test_dataloader.num_workers must be zero or a positive integer, got 'x'"),
    ("val_dataloader.num_workers=-1", "val_dataloader.num_workers must be zero or a positive integer, got -1"),
    ("train_dataloader.batch_size=true", "train_dataloader.batch_size must be a positive integer, got True"),
    ("train_dataloader.batch_size=2.5", "train_dataloader.batch_size must be a positive integer, got 2.5"),
    ("+train_dataloader.persistent_workers=maybe",
     "train_dataloader.persistent_workers must be True or False, got 'maybe'"),
    ("train_cfg.max_epochs=abc", "train_cfg.max_epochs must be a positive integer, got 'abc'"),
    ("train_cfg.max_epochs=0", "train_cfg.max_epochs must be a positive integer, got 0"),
    ("train_cfg.val_interval=0", "train_cfg.val_interval must be a positive integer, got 0"),
    ("train_cfg.by_epoch=x", "train_cfg.by_epoch must be True or False, got 'x'"),
    ("optim_wrapper.optimizer.lr=abc", "optim_wrapper.optimizer.lr must be a positive number, got 'abc'"),
    ("optim_wrapper.optimizer.lr=-1", "optim_wrapper.optimizer.lr must be a positive number, got -1"),
    ("optim_wrapper.optimizer.weight_decay=x",
     "optim_wrapper.optimizer.weight_decay must be zero or a positive number, got 'x'"),
    ("optim_wrapper.optimizer.betas=0.9", "optim_wrapper.optimizer.betas must be two numbers in [0, 1), got 0.9"),
    ("optim_wrapper.optimizer.betas=0.9,x", "optim_wrapper.optimizer.betas.1 must be a number in [0.0, 1.0), got 'x'"),
    ("+optim_wrapper.clip_grad.max_norm=abc", "optim_wrapper.clip_grad.max_norm must be a positive number, got 'abc'"),
    ("+optim_wrapper.accumulative_counts=0",
     "optim_wrapper.accumulative_counts must be a positive integer, got 0"),
    ("optim_wrapper.paramwise_cfg.norm_decay_mult=x",
     "optim_wrapper.paramwise_cfg.norm_decay_mult must be zero or a positive number, got 'x'"),
    ("param_scheduler.0.end=abc", "param_scheduler.0.end must be zero or a positive integer, got 'abc'"),
    ("param_scheduler.1.eta_min=x", "param_scheduler.1.eta_min must be zero or a positive number, got 'x'"),
    ("auto_scale_lr.base_batch_size=x", "auto_scale_lr.base_batch_size must be a positive integer, got 'x'"),
    ("randomness.seed=abc", "randomness.seed must be zero or a positive integer, got 'abc'"),
    ("randomness.deterministic=maybe", "randomness.deterministic must be True or False, got 'maybe'"),
    ("default_hooks.checkpoint.interval=0",
     "default_hooks.checkpoint.interval must be a positive integer, got 0"),
    ("default_hooks.logger.interval=x", "default_hooks.logger.interval must be a positive integer, got 'x'"),
    ("model.head.num_classes=true", "model.head.num_classes must be a positive integer, got True"),
    ("model.head.loss.label_smooth_val=abc",
     "model.head.loss.label_smooth_val must be a number in [0.0, 1.0), got 'abc'"),
    ("model.backbone.drop_path_rate=abc", "model.backbone.drop_path_rate must be a number in [0.0, 1.0), got 'abc'"),
    ("+model.backbone.frozen_stages=9", "model.backbone.frozen_stages must be an integer from -1 to 4, got 9"),
    ("+model.backbone.out_indices=x", "model.backbone.out_indices must be stage indices (0 to 3), got 'x'"),
    ("test_dataloader.dataset.pipeline.1.scale=0",
     "test_dataloader.dataset.pipeline.1.scale must be a positive integer, got 0"),
    ("data_preprocessor.std=1,2,0", "data_preprocessor.std.2 must be a positive number, got 0"),
    ("data_preprocessor.mean=abc", "data_preprocessor.mean must be three numbers (R, G, B on a 0-255 scale), "
                                   "got 'abc'"),
    ("test_evaluator.topk=abc", "test_evaluator.topk must be a positive integer or a list of them, e.g. (1, 5), "
                                "got 'abc'"),
    ("val_evaluator.topk=0,1", "val_evaluator.topk must be a positive integer or a list of them, e.g. (1, 5), "
                               "got [0, 1]"),
    ("+test_evaluator.thrs=x", "test_evaluator.thrs must be a number, got 'x'"),
    ("model.head=3", "model.head must be a dict, got 3"),
    ("data_preprocessor=5", "data_preprocessor must be a dict, got 5"),
    ("test_dataloader.dataset.pipeline=5",
     "test_dataloader.dataset.pipeline must be a list of dict(type=..., ...) steps, got 5"),
])
def test_bad_values_name_the_key_the_value_and_what_is_expected(override: str, message: str) -> None:
    cfg = load_config(DIGITS, [override])
    with pytest.raises(ConfigError) as error:
        check_all(cfg)
    assert str(error.value) == message


def test_a_pipeline_value_of_the_wrong_type_is_a_config_error() -> None:
    cfg = load_config(DIGITS, ["train_dataloader.dataset.pipeline.1.padding=abc"])
    with pytest.raises(ConfigError, match=r"^train_dataloader.dataset.pipeline: .*abc"):
        data.train_transform(cfg)


def test_mixup_alpha_is_checked() -> None:
    cfg = load_config(TINY, ["model.train_cfg.augments.0.alpha=x"])
    with pytest.raises(ConfigError, match=r"^model.train_cfg.augments.0.alpha must be a positive number, got 'x'$"):
        data.batch_augment(cfg, 10)


@pytest.mark.parametrize("section", ["test_evaluator", "val_evaluator"])
def test_topk_above_the_class_count_is_left_out_and_said_once(section: str) -> None:
    cfg = load_config(DIGITS, [f"{section}.topk=1,5,10"])
    spec = evaluator_spec(cfg, 3, section)
    assert spec.topk == (1,)
    assert spec.note == f"{section}.topk 5, 10 are more than the model's 3 classes: reporting top-1 only"
    spec = evaluator_spec(cfg, 7, section)
    assert spec.topk == (1, 5)
    assert spec.note == f"{section}.topk 10 is more than the model's 7 classes: reporting top-1 and top-5 only"
    assert evaluator_spec(cfg, 10, section).note is None
    assert evaluator_spec(load_config(DIGITS, [f"{section}.topk=5"]), 2, section).topk == (1,)


def test_default_evaluators() -> None:
    assert evaluator_spec({}, 1000).topk == (1, 5)
    assert evaluator_spec({}, 2).topk == (1,) and "reporting top-1 only" in evaluator_spec({}, 2).note
    assert val_evaluator_spec({}, 2).topk == (1,) and val_evaluator_spec({}, 2).note is None


@pytest.mark.parametrize("override, message", [
    ("test_dataloader.dataset.data_root=2024",
     "test_dataloader.dataset.data_root must be a string, got 2024; quote a number (data_root='2024')"),
    ("+test_dataloader.dataset.data_prefix=[1]",
     "test_dataloader.dataset.data_prefix must be a path or dict(img_path=...), got [1]"),
    ("+test_dataloader.dataset.classes=3",
     "test_dataloader.dataset.classes must be a list of names or a file of names, got 3"),
    ("+test_dataloader.dataset.with_label=x", "test_dataloader.dataset.with_label must be True or False, got 'x'"),
])
def test_bad_dataset_values(override: str, message: str) -> None:
    cfg = load_config(DIGITS, [override])
    with pytest.raises(ConfigError) as error:
        data.build_section_dataset(cfg, "test_dataloader", None, 10)
    assert str(error.value) == message
