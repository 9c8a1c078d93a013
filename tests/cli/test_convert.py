"""davit convert."""
import logging

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


def test_convert_a_whole_florence2_checkpoint_between_its_layouts(tmp_path, capsys, caplog):
    """The remote code's file (language model included) to transformers' layout, timm's tower and
    back: the language model is skipped in one log line, the encoder's tensors survive exactly."""
    from davit.checkpoint.formats import from_davit
    from davit.model import Florence2Encoder

    torch.manual_seed(0)
    arch = {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8], "window_size": 3,
            "patch_kernels": [7, 3, 3, 3], "patch_strides": [4, 2, 2, 2], "patch_paddings": [3, 1, 1, 1],
            "pad_to_stride": False, "channel_attention": "florence2", "head": False}
    ours = Florence2Encoder(arch, projection_dim=12).state_dict()
    remote = from_davit(ours, "florence2")
    src = tmp_path / "pytorch_model.bin"
    torch.save(remote | {"language_model.model.shared.weight": torch.randn(5, 4)}, src)
    native, back, tower = (tmp_path / name for name in ("model.safetensors", "back.bin", "tower.pth"))
    with caplog.at_level(logging.INFO, logger="davit"):
        assert run_subcommand("convert", [str(src), str(native), "--to", "transformers"]) == 0
    assert "ignored 1 tensor(s) of Florence-2's language model" in caplog.text
    assert detect_format(load_state_dict_file(native)) == "transformers"
    assert run_subcommand("convert", [str(native), str(back), "--to", "florence2"]) == 0
    again = load_state_dict_file(back)
    assert again.keys() == remote.keys() and all(torch.equal(again[k], remote[k]) for k in remote)
    assert run_subcommand("convert", [str(back), str(tower), "--to", "timm"]) == 0
    assert "stages.0.blocks.0.spatial_block.attn.qkv.weight" in load_state_dict_file(tower)
    capsys.readouterr()


def test_convert_classification_weights_to_the_dense_layouts(tiny_mm_checkpoint, tmp_path, caplog, capsys):
    """The fix for "classification weights do not load into the official detection backbone":
    ``--to mmdet`` (a detector's ``backbone.`` keys) and ``--to official-dense`` (a backbone file)
    write the backbone alone, the head left out in one log line."""
    from davit.checkpoint.formats import from_davit, to_davit

    detector, plain = tmp_path / "mmdet.pth", tmp_path / "dense.safetensors"
    with caplog.at_level(logging.INFO, logger="davit"):
        assert run_subcommand("convert", [str(tiny_mm_checkpoint), str(detector), "--to", "mmdet"]) == 0
    assert "left out 4 tensor(s): head.norm.weight" in caplog.text
    assert run_subcommand("convert", [str(detector), str(plain), "--to", "official-dense"]) == 0
    written = load_state_dict_file(plain)
    ours = {k: v for k, v in to_davit(load_state_dict_file(tiny_mm_checkpoint)).items() if k.startswith("backbone.")}
    expected = from_davit(ours, "official-dense")
    assert "patch_embeds.0.proj.weight" in written and not any(k.startswith("backbone.") for k in written)
    assert written.keys() == expected.keys() and all(torch.equal(written[k], expected[k]) for k in expected)
    capsys.readouterr()
