"""The OpenMMLab plugin: the backbone class without mmengine (a stand-in registry), and, where
mmengine/mmdet/mmseg/mmpretrain import, building it through their registries and configs."""
import importlib
import sys
from pathlib import Path

import pytest
import torch

from davit.checkpoint.formats import from_davit
from davit.dense import backbone
from davit.dense.openmmlab import REGISTERED_NAME, DavitToolkitDaViT, register, register_with
from davit.errors import InvalidArgumentError, MissingDependencyError

ARCH = {"embed_dims": [16, 32, 64, 128], "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8], "window_size": 4}
CONFIGS = Path(__file__).parents[2] / "configs" / "dense"
PACKAGES = ("mmdet", "mmseg", "mmpretrain")


class StandInRegistry:
    """What the plugin uses of an mmengine ``Registry``."""

    def __init__(self) -> None:
        self.modules: dict[str, type] = {}

    def register_module(self, name: str, module: type, force: bool = False) -> None:
        assert force or name not in self.modules
        self.modules[name] = module

    def build(self, cfg: dict) -> torch.nn.Module:
        options = dict(cfg)
        return self.modules[options.pop("type")](**options)


def _same_features(module: DavitToolkitDaViT, arch, out_indices=(0, 1, 2, 3)) -> None:
    reference = backbone(arch, out_indices=out_indices).eval()
    reference.load_state_dict(module.body.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features, expected = module.eval()(x), reference(x)
    assert isinstance(features, tuple) and len(features) == len(expected)
    for feature, want in zip(features, expected):
        assert feature.ndim == 4
        torch.testing.assert_close(feature, want)


def _registry(package: str):
    """``package``'s MODELS with the backbone in it, or a skip when the package does not import."""
    pytest.importorskip("mmengine")
    try:
        register_with(package)
    except MissingDependencyError as error:
        pytest.skip(str(error))
    registry = importlib.import_module(f"{package}.registry").MODELS
    assert registry.module_dict[REGISTERED_NAME] is DavitToolkitDaViT
    return registry


def _mmengine_registry():
    """A plain mmengine model registry with the backbone in it (builds without any OpenMMLab models)."""
    registry_module = pytest.importorskip("mmengine.registry")
    registry = registry_module.Registry("davit-test", build_func=registry_module.build_model_from_cfg)
    register(registry)
    return registry


def test_builds_through_a_registry_with_the_dense_backbones_features():
    registry = StandInRegistry()
    assert register(registry) is DavitToolkitDaViT
    register(registry)  # again is harmless
    module = registry.build({"type": REGISTERED_NAME, "arch": ARCH, "out_indices": (1, 3)})
    assert module.out_channels == [32, 128]
    _same_features(module, ARCH, (1, 3))


@pytest.mark.parametrize("fmt", ["davit", "mmdet"])
def test_init_cfg_pretrained_loads_a_checkpoint_file(tmp_path, fmt):
    source = DavitToolkitDaViT(ARCH)
    with torch.no_grad():
        for param in source.parameters():
            param.normal_()
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": from_davit({f"backbone.{k}": v for k, v in source.body.state_dict().items()}, fmt)},
               path)
    module = DavitToolkitDaViT(ARCH, init_cfg={"type": "Pretrained", "checkpoint": str(path)})
    module.init_weights()
    for (name, param), want in zip(module.state_dict().items(), source.state_dict().values()):
        torch.testing.assert_close(param, want, msg=name)


def test_frozen_stages_stay_frozen_after_train():
    module = DavitToolkitDaViT(ARCH, frozen_stages=2).train()
    body = module.body
    for frozen in (body.stem, *body.stages[:2], *body.out_norms[:2]):
        assert not frozen.training
        assert not any(p.requires_grad for p in frozen.parameters())
    assert body.stages[2].training and all(p.requires_grad for p in body.stages[2].parameters())


@pytest.mark.parametrize("init_cfg", [{"type": "Kaiming"}, {"type": "Pretrained"}])
def test_rejects_init_cfgs_it_cannot_apply(init_cfg):
    with pytest.raises(InvalidArgumentError, match="init_cfg"):
        DavitToolkitDaViT(ARCH, init_cfg=init_cfg)


def test_a_missing_package_is_one_line_naming_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mmdet", None)
    monkeypatch.delitem(sys.modules, "davit.dense.mmdet_plugin", raising=False)
    with pytest.raises(MissingDependencyError, match="pip install .*mmdet") as info:
        importlib.import_module("davit.dense.mmdet_plugin")
    assert "\n" not in str(info.value)
    with pytest.raises(InvalidArgumentError, match="unknown OpenMMLab package"):
        register_with("mmocr")


def test_builds_through_an_mmengine_registry():
    registry = _mmengine_registry()
    from mmengine.model import BaseModule

    module = registry.build({"type": REGISTERED_NAME, "arch": "tiny", "out_indices": (0, 1, 2, 3)})
    assert isinstance(module, BaseModule)
    _same_features(module, "tiny")


@pytest.mark.parametrize("package", PACKAGES)
def test_builds_through_the_packages_registry(package):
    registry = _registry(package)
    try:  # building imports the package's models, which mmdet and mmseg compile against mmcv's ops
        importlib.import_module(f"{package}.models")
    except Exception as error:
        pytest.skip(f"{package}.models does not import here: {type(error).__name__}: {error}")
    module = registry.build({"type": REGISTERED_NAME, "arch": "tiny", "out_indices": (0, 1, 2, 3)})
    _same_features(module, "tiny")


def test_mmengine_init_weights_loads_init_cfg_inside_a_model(tmp_path):
    pytest.importorskip("mmengine")
    from mmengine.model import Sequential

    source = DavitToolkitDaViT(ARCH)
    path = tmp_path / "weights.pth"
    torch.save({f"backbone.{k}": v for k, v in source.body.state_dict().items()}, path)
    model = Sequential(DavitToolkitDaViT(ARCH, init_cfg={"type": "Pretrained", "checkpoint": str(path)}))
    model.init_weights()
    for name, param in model[0].body.state_dict().items():
        torch.testing.assert_close(param, source.body.state_dict()[name], msg=name)


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.py")), ids=lambda path: path.name)
def test_configs_load_and_their_backbone_builds(config):
    package = "mmseg" if "upernet" in config.name else "mmdet"
    _registry(package)  # the configs' _base_ files come from the package's install
    pytest.importorskip("pkg_resources", reason="mmengine 0.10 finds mmdet::/mmseg:: bases with it (setuptools<81)")
    registry = _mmengine_registry()
    from mmengine.config import Config

    cfg = Config.fromfile(str(config))
    assert cfg.custom_imports["imports"] == [f"davit.dense.{package}_plugin"]
    assert cfg.model.backbone.type == REGISTERED_NAME
    with torch.device("meta"):  # shapes only; init_weights (the download) is not called
        module = registry.build(cfg.model.backbone)
    head = cfg.model.neck if package == "mmdet" else cfg.model.decode_head
    assert module.out_channels == list(head.in_channels)
