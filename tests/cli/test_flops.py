"""davit flops."""
import json

import pytest

from davit.cli.app import run_subcommand
from tests.helpers import MINI_ARCH_JSON

SEED_TABLE = {"davit-tiny_3rdparty_in1k": (28_360_168, 4.54e9), "davit-small_3rdparty_in1k": (49_745_896, 8.80e9),
              "davit-base_3rdparty_in1k": (87_954_408, 15.51e9)}


@pytest.mark.parametrize("name", list(SEED_TABLE))
def test_flops_json_matches_seed_table(name, capsys):
    assert run_subcommand("flops", [name, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    params, flops = SEED_TABLE[name]
    assert isinstance(result["params"], int) and isinstance(result["flops"], int)
    assert result["params"] == params
    assert abs(result["flops"] / flops - 1) < 0.005


def test_flops_mmpretrain_semantics_equal_the_reference_counts(capsys):
    expected = {"tiny": 4_539_698_688, "small": 8_799_942_144, "base": 15_509_702_656}
    for arch, flops in expected.items():
        assert run_subcommand("flops", [arch, "--semantics", "mmpretrain", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["flops"] == flops


def test_flops_other_input_size(capsys):
    assert run_subcommand("flops", ["davit-giant", "--input-size", "97", "130", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == 1_406_470_120 and result["input_size"] == [97, 130]
    assert result["flops"] > 0


def test_flops_text_and_a_json_architecture(capsys):
    spec = MINI_ARCH_JSON
    assert run_subcommand("flops", [spec, "--input-size", "64", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"model       {spec}" and lines[1] == "input size  64x64"
    assert lines[2].startswith("params      ") and lines[4].startswith("head flops  64,000")
