"""JSON and YAML configs are data: parsed, never executed, and read as the Python config they mirror."""
from __future__ import annotations

import json

import pytest
import yaml

from davit import get_model
from davit.config import dump_config, load_config
from davit.errors import ConfigError
from tests.helpers import MINI_ARCH
from tests.paths import REPO

CONFIG = REPO / "configs" / "davit" / "davit-digits_1xb64.py"


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_data_config_reads_as_the_python_one(tmp_path, suffix):
    cfg = load_config(CONFIG)
    path = tmp_path / f"digits{suffix}"
    dump_config(cfg, path)
    assert "import" not in path.read_text()
    assert load_config(path) == json.loads(json.dumps(cfg))  # tuples are lists in JSON and YAML
    assert load_config(path, ["train_cfg.max_epochs=3"])["train_cfg"]["max_epochs"] == 3


def test_a_data_config_never_executes_anything(tmp_path):
    marker = tmp_path / "ran"
    code = tmp_path / "base.py"
    code.write_text(f"open({str(marker)!r}, 'w').close()\nmodel = dict(type='ImageClassifier')\n")
    (tmp_path / "child.json").write_text(json.dumps({"_base_": "base.py", "x": 1}))
    with pytest.raises(ConfigError, match="data-only config, but its _base_"):
        load_config(tmp_path / "child.json")
    (tmp_path / "evil.yaml").write_text("x: !!python/object/apply:os.system ['touch " + str(marker) + "']\n")
    with pytest.raises(ConfigError, match="is not a valid YAML config"):
        load_config(tmp_path / "evil.yaml")
    assert not marker.exists()


def test_get_model_takes_a_yaml_config(tmp_path):
    arch = MINI_ARCH
    cfg = {"model": {"type": "ImageClassifier", "backbone": {"type": "DaViT", "arch": arch},
                     "neck": {"type": "GlobalAveragePooling"},
                     "head": {"type": "LinearClsHead", "num_classes": 4, "in_channels": 64}}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert get_model(str(path), pretrained=False).num_classes == 4
