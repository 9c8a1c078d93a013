"""``davit embed --out FOLDER/``: sharded parquet / npy parts, equal to the one-file output; two
processes under torchrun write every sample exactly once, and a killed run resumes."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from davit.cli.app import run_subcommand
from davit.engine.embed import load_embeddings
from davit.engine.embed_shards import read_embedding_shards
from tests.helpers import MINI_ARCH_JSON

webdataset = pytest.importorskip("webdataset")
pytest.importorskip("pyarrow")
MODEL = ["--model", MINI_ARCH_JSON, "--random-weights", "--seed", "0", "--num-workers", "0"]


def write_shards(folder, shards: int, per_shard: int, size: int = 32) -> list[str]:
    """Webdataset shards of random photos; returns every sample's name, SHARD#KEY."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    rng = np.random.default_rng(0)
    for shard in range(shards):
        path = folder / f"photos-{shard:03d}.tar"
        with webdataset.TarWriter(str(path)) as writer:
            for i in range(per_shard):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
                writer.write({"__key__": f"{shard:03d}_{i:04d}", "png": buffer.getvalue()})
                names.append(f"{path}#{shard:03d}_{i:04d}")
    return names


def embed(*args: str) -> int:
    return run_subcommand("embed", [*MODEL, *args])


@pytest.mark.parametrize("shard_format", ["parquet", "npy"])
def test_parts_hold_what_one_file_holds(tmp_path, shard_format):
    names = write_shards(tmp_path / "wds", 2, 5)
    source = f"wds:{tmp_path}/wds/photos-{{000..001}}.tar"
    assert embed(source, "--out", str(tmp_path / "one.npz")) == 0
    assert embed(source, "--out", str(tmp_path / "parts") + "/", "--shard-size", "3",
                 "--shard-format", shard_format, "--batch-size", "2") == 0
    array, keys = load_embeddings(tmp_path / "one.npz")
    sharded, sharded_keys = read_embedding_shards(tmp_path / "parts")
    assert keys == names and sorted(sharded_keys) == names
    order = [sharded_keys.index(name) for name in names]
    np.testing.assert_allclose(sharded[order], array, rtol=1e-5, atol=1e-6)
    manifest = json.loads((tmp_path / "parts" / "_manifest.json").read_text())
    assert (manifest["rows"], manifest["format"], manifest["shape"], len(manifest["parts"])) == \
           (10, shard_format, [array.shape[1]], 4)
    if shard_format == "parquet":
        pandas = pytest.importorskip("pandas")
        table = pandas.read_parquet(tmp_path / "parts")
        assert sorted(table["key"]) == names and len(table["embedding"][0]) == array.shape[1]


def test_a_folder_with_parts_needs_resume_and_the_same_model(tmp_path, capsys):
    write_shards(tmp_path / "wds", 1, 4)
    source = f"wds:{tmp_path}/wds/photos-000.tar"
    out = str(tmp_path / "parts")
    assert embed(source, "--out", out) == 0
    assert embed(source, "--out", out) == 1
    assert "pass --resume" in capsys.readouterr().err
    assert embed(source, "--out", out, "--resume") == 0
    assert "0 embedding(s)" in capsys.readouterr().err and len(read_embedding_shards(out)[1]) == 4
    assert run_subcommand("embed", ["--model", MINI_ARCH_JSON, "--random-weights", "--seed", "1", source,
                                    "--out", out, "--resume"]) == 1
    assert "made by another model" in capsys.readouterr().err


def _torchrun(args: list[str], cwd, **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "davit", "embed", *MODEL, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def _kill_all(marker: str) -> None:
    """SIGKILL every process whose command line holds ``marker`` (torchrun and its workers, which run
    in sessions of their own)."""
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                if marker.encode() in file.read():
                    os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            continue


@pytest.mark.slow
def test_two_processes_write_each_sample_once_and_resume_after_a_kill(tmp_path):
    names = write_shards(tmp_path / "wds", 2, 60)
    source = f"wds:{tmp_path}/wds/photos-{{000..001}}.tar"
    out = tmp_path / "parts"
    options = [source, "--out", f"{out}/", "--shard-size", "4", "--batch-size", "2", "--device", "cpu"]
    first = _torchrun(options, tmp_path)
    deadline = time.monotonic() + 240
    while not (out.is_dir() and any(p.name.startswith("part-") for p in out.iterdir())):
        assert first.poll() is None, first.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    _kill_all(str(out))  # as a lost machine would: no clean-up
    first.wait()
    _, interrupted = read_embedding_shards(out)
    assert 0 < len(interrupted) < len(names) and len(set(interrupted)) == len(interrupted)

    second = _torchrun([*options, "--resume"], tmp_path)
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    array, keys = read_embedding_shards(out)
    assert sorted(keys) == names  # every sample, exactly once
    assert f"({len(interrupted)} of {len(names)} there already)" in stderr
    assert embed(source, "--out", str(tmp_path / "one.npy")) == 0
    one, one_keys = load_embeddings(tmp_path / "one.npy")
    np.testing.assert_allclose(array[[keys.index(n) for n in one_keys]], one, rtol=1e-5, atol=1e-6)
