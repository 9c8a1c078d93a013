import os
import pickle

import pytest
import torch

from davit.checkpoint import io as ckpt_io
from davit.checkpoint.io import CheckpointError, load_state_dict_file, read_metadata, save_state_dict_file


def _state() -> dict[str, torch.Tensor]:
    return {"head.fc.weight": torch.randn(3, 4), "head.fc.bias": torch.arange(3.0)}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip_with_metadata(tmp_path, suffix):
    state, meta = _state(), {"arch": "tiny", "format": "davit"}
    path = save_state_dict_file(state, tmp_path / "sub" / f"ckpt{suffix}", metadata=meta)
    assert path == tmp_path / "sub" / f"ckpt{suffix}"
    _assert_same(load_state_dict_file(path), state)
    assert read_metadata(path) == meta
    assert sorted(os.listdir(path.parent)) == [path.name]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_metadata_defaults_to_empty(tmp_path, suffix):
    path = save_state_dict_file(_state(), tmp_path / f"ckpt{suffix}")
    assert read_metadata(path) == {}


def test_safetensors_makes_tensors_contiguous(tmp_path):
    state = {"w": torch.randn(4, 3).t()}
    path = save_state_dict_file(state, tmp_path / "w.safetensors")
    _assert_same(load_state_dict_file(path), state)


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": sd, "meta": {"epoch": 3, "env": "x"}},
    lambda sd: {"model": sd, "epoch": 300},
    lambda sd: {"state_dict_ema": sd, "epoch": 1},
    lambda sd: {"model_ema": sd},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},
    lambda sd: {"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
])
def test_wrappers_are_unwrapped(tmp_path, wrap):
    state = _state()
    torch.save(wrap(state), tmp_path / "ckpt.pth")
    _assert_same(load_state_dict_file(tmp_path / "ckpt.pth"), state)


def test_state_dict_preferred_over_ema(tmp_path):
    state, ema = _state(), {k: v + 1 for k, v in _state().items()}
    torch.save({"state_dict_ema": ema, "state_dict": state}, tmp_path / "ckpt.pth")
    _assert_same(load_state_dict_file(tmp_path / "ckpt.pth"), state)


def test_prefix_kept_unless_on_every_key(tmp_path):
    state = {"module.a": torch.ones(1), "b": torch.ones(1)}
    torch.save(state, tmp_path / "ckpt.pth")
    assert set(load_state_dict_file(tmp_path / "ckpt.pth")) == {"module.a", "b"}


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch", "pickle2", "pickle5"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, writer):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pth"
    payload = {"head.fc.weight": torch.ones(1), "x": _Exploit(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(writer[-1])))
    with pytest.raises(CheckpointError, match="refuse") as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert str(path) in message and "safetensors" in message and "trusted environment" in message
    if writer != "pickle5":  # protocol 5 already fails on an opcode the safe loader lacks
        assert "Python objects other than tensors" in message
    with pytest.raises(CheckpointError, match="refuse"):
        read_metadata(path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_corrupt_file_raises(tmp_path, suffix, damage):
    path = save_state_dict_file(_state(), tmp_path / f"ckpt{suffix}")
    data = path.read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint" * 8}
    path.write_bytes(damaged[damage])
    with pytest.raises(CheckpointError, match=str(path)):
        load_state_dict_file(path)


@pytest.mark.parametrize("fn", [load_state_dict_file, read_metadata])
def test_missing_file(tmp_path, fn):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        fn(tmp_path / "nope.pth")


def test_non_tensor_value_raises(tmp_path):
    torch.save({"head.fc.weight": torch.ones(1), "epoch": 3}, tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError, match="'epoch'"):
        load_state_dict_file(tmp_path / "ckpt.pth")


def test_non_mapping_raises(tmp_path):
    torch.save([torch.ones(1)], tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_state_dict_file(tmp_path / "ckpt.pth")


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    path = save_state_dict_file(_state(), tmp_path / "ckpt.pth")
    before = path.read_bytes()

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_io.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_state_dict_file({"x": torch.zeros(2)}, path)
    assert os.listdir(tmp_path) == [path.name]
    assert path.read_bytes() == before
