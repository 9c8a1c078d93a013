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
