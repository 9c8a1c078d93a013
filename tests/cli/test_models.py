"""davit list."""
from davit.cli.app import run_subcommand


def test_list(capsys):
    assert run_subcommand("list", ["tiny"]) == 0
    out = capsys.readouterr().out
    assert "davit-tiny_3rdparty_in1k" in out and "davit-small" not in out


def test_list_pretrained_only(capsys):
    assert run_subcommand("list", ["--pretrained"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert "davit-small_msft_in1k" in names and "davit-giant" not in names
