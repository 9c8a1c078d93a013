"""davit convert."""
import torch

from davit.checkpoint.formats import detect_format
from davit.checkpoint.io import load_state_dict_file
from davit.cli.app import run_subcommand


def test_convert_between_formats(tiny_mm_checkpoint, tmp_path, capsys):
    out = tmp_path / "tiny-official.safetensors"
    assert run_subcommand("convert", [str(tiny_mm_checkpoint), str(out), "--to", "official"]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    converted = load_state_dict_file(out)
    assert detect_format(converted) == "official"
    back = tmp_path / "back.pth"
    assert run_subcommand("convert", [str(out), str(back), "--to", "mmpretrain"]) == 0
    original = load_state_dict_file(tiny_mm_checkpoint)
    again = load_state_dict_file(back)
    assert sorted(again) == sorted(original) and all(torch.equal(again[k], original[k]) for k in original)


def test_convert_takes_a_model_name_as_the_readme_shows(tiny_mm_checkpoint, tmp_path, monkeypatch, capsys):
    """``davit convert davit-tiny_3rdparty_in1k out.safetensors --to official``: the zoo name is
    the cached (or downloaded) file, and the output carries the zoo entry's card."""
    from davit.checkpoint.card import card_from_metadata, default_card
    from davit.checkpoint.io import read_metadata
    from davit.zoo import MODELS

    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    url = MODELS["davit-tiny_3rdparty_in1k"].weights
    (cache / url.rsplit("/", 1)[-1]).write_bytes(tiny_mm_checkpoint.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    out = tmp_path / "tiny-official.safetensors"
    assert run_subcommand("convert", ["davit-tiny_3rdparty_in1k", str(out), "--to", "official"]) == 0
    assert detect_format(load_state_dict_file(out)) == "official"
    assert card_from_metadata(read_metadata(out)) == default_card("tiny", 1000)
