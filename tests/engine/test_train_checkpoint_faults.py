"""A checkpoint write that fails (a full disk) ends in one line and leaves no debris."""
from __future__ import annotations

import errno

import pytest
import torch

from davit.engine import train_checkpoint
from davit.errors import TrainError


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:664] . "
                                                  "PytorchStreamWriter failed writing file data/0: file write failed")])
def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "latest.pth"
    train_checkpoint.save_atomic({"epoch": 1}, path)
    real_save = torch.save

    def full_disk(obj, f):
        f.write(b"partial")
        raise failure

    monkeypatch.setattr(train_checkpoint.torch, "save", full_disk)
    with pytest.raises(TrainError, match=r"cannot write the checkpoint .*latest.pth") as refused:
        train_checkpoint.save_atomic({"epoch": 2}, path)
    assert "\n" not in str(refused.value) and "free disk space" in str(refused.value)
    monkeypatch.setattr(train_checkpoint.torch, "save", real_save)
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]  # no temporary file left
    assert torch.load(path, weights_only=True) == {"epoch": 1}
