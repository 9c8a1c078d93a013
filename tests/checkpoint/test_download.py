import hashlib
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from huggingface_hub.utils import EntryNotFoundError

from davit.checkpoint import download as dl
from davit.checkpoint import hub
from davit.checkpoint.download import (
    DownloadError,
    cached_path_for,
    checkpoint_cache_dir,
    download_checkpoint,
    expected_sha256_prefix,
)
from davit.checkpoint.hub import download_hf_checkpoint, is_hf_hub_name, parse_hf_hub_name
from davit.checkpoint.io import load_state_dict_file, save_state_dict_file
from tests.checkpoint.fakes import FakeHub

HF_REPO = "timm/davit_tiny.msft_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Server:
    """A local HTTP server for files the test puts in ``files``; ``/cut/...`` paths send half a body."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                name = self.path.rsplit("/", 1)[-1]
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                cut = self.path.startswith("/cut/")
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if cut else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    def add_checkpoint(self, stem: str, tmp_path: Path, prefix: str | None = None) -> str:
        """Serve a small torch checkpoint named ``{stem}-{prefix}.pth`` (real SHA-256 prefix by default)."""
        staging = tmp_path / "staging.pth"
        torch.save({"head.fc.weight": torch.randn(8, 4), "head.fc.bias": torch.randn(8)}, staging)
        body = staging.read_bytes()
        name = f"{stem}-{prefix or hashlib.sha256(body).hexdigest()[:8]}.pth"
        self.files[name] = body
        return name

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def _cache_files(torch_home: Path) -> list[str]:
    cache = torch_home / "hub" / "checkpoints"
    return sorted(os.listdir(cache)) if cache.exists() else []


def test_cache_dir_honours_torch_home(torch_home):
    assert checkpoint_cache_dir() == torch_home / "hub" / "checkpoints"
    assert cached_path_for("https://x.org/a/b/davit.pth?dl=1") == torch_home / "hub" / "checkpoints" / "davit.pth"
    with pytest.raises(ValueError):
        cached_path_for("https://x.org/")


@pytest.mark.parametrize("name, prefix", [
    ("davit-tiny_3rdparty_in1k_20221116-700fdf7d.pth", "700fdf7d"),
    ("resnet50-0676ba61.pth.tar", "0676ba61"),
    ("davit_tiny.msft_in1k-" + "a" * 64 + ".safetensors", "a" * 64),
    ("model_20221116.pth", None),
    ("model-700fdf7.pth", None),
    ("model-700FDF7D.pth", None),
    ("model-700fdf7d-final.pth", None),
])
def test_expected_sha256_prefix(name, prefix):
    assert expected_sha256_prefix(name) == prefix


def test_download_then_reuse_cache(server, torch_home, tmp_path, capsys):
    name = server.add_checkpoint("model_20221116", tmp_path)
    path = download_checkpoint(server.url(f"weights/{name}"), progress=True)
    assert path == torch_home / "hub" / "checkpoints" / name
    assert path.read_bytes() == server.files[name]
    assert set(load_state_dict_file(path)) == {"head.fc.weight", "head.fc.bias"}
    err = capsys.readouterr().err
    assert f"Downloading {server.url(f'weights/{name}')} to {path}" in err
    assert "100%" in err and name in err
    assert _cache_files(torch_home) == [name]

    assert download_checkpoint(server.url(f"weights/{name}"), progress=True) == path
    assert len(server.requests) == 1


def test_no_output_without_progress(server, torch_home, tmp_path, capsys):
    name = server.add_checkpoint("model_20221116", tmp_path)
    download_checkpoint(server.url(name), progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_wrong_hash_is_discarded(server, torch_home, tmp_path):
    name = server.add_checkpoint("model_20221116", tmp_path, prefix="00000000")
    with pytest.raises(DownloadError, match="00000000") as info:
        download_checkpoint(server.url(name), progress=False)
    assert hashlib.sha256(server.files[name]).hexdigest() in str(info.value)
    assert _cache_files(torch_home) == []


def test_hash_check_can_be_skipped(server, torch_home, tmp_path):
    name = server.add_checkpoint("model_20221116", tmp_path, prefix="00000000")
    path = download_checkpoint(server.url(name), progress=False, check_hash=False)
    assert path.read_bytes() == server.files[name]


def test_interrupted_transfer_leaves_nothing(server, torch_home, tmp_path):
    name = server.add_checkpoint("model_20221116", tmp_path)
    with pytest.raises(DownloadError, match="interrupted"):
        download_checkpoint(server.url(f"cut/{name}"), progress=False)
    assert _cache_files(torch_home) == []


def test_keyboard_interrupt_mid_transfer_leaves_nothing(server, torch_home, tmp_path, monkeypatch):
    class InterruptingBar(dl.tqdm):
        def update(self, n=1):
            raise KeyboardInterrupt

    monkeypatch.setattr(dl, "tqdm", InterruptingBar)
    name = server.add_checkpoint("model_20221116", tmp_path)
    with pytest.raises(KeyboardInterrupt):
        download_checkpoint(server.url(name), progress=False)
    assert _cache_files(torch_home) == []


def test_unreachable_url(torch_home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x_20221116-00000000.pth"
    with pytest.raises(DownloadError) as info:
        download_checkpoint(url, progress=False)
    message = str(info.value)
    assert url in message and str(cached_path_for(url)) in message and "by hand" in message
    assert _cache_files(torch_home) == []


def test_http_404(server, torch_home):
    url = server.url("missing_20221116-00000000.pth")
    with pytest.raises(DownloadError, match="404") as info:
        download_checkpoint(url, progress=False)
    assert url in str(info.value)
    assert _cache_files(torch_home) == []


# --- Hugging Face Hub ---------------------------------------------------------------------------


def _put_in_hf_cache(cache: Path, filename: str) -> Path:
    repo = cache / f"models--{HF_REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    target = repo / "snapshots" / COMMIT / filename
    state = {"head.fc.weight": torch.randn(5, 2)}
    save_state_dict_file(state, target)
    return target


def test_hf_names():
    assert is_hf_hub_name(f"hf-hub:{HF_REPO}")
    assert not is_hf_hub_name("davit_tiny.pth") and not is_hf_hub_name(Path("hf-hub:x/y"))
    assert parse_hf_hub_name(f"hf-hub:{HF_REPO}") == (HF_REPO, None)
    assert parse_hf_hub_name(f"hf-hub:{HF_REPO}@v1.0") == (HF_REPO, "v1.0")


@pytest.mark.parametrize("name", ["hf-hub:", "hf-hub:davit_tiny", "hf-hub:timm/", "hf-hub:/x",
                                  f"hf-hub:{HF_REPO}@", HF_REPO])
def test_bad_hf_name(name):
    with pytest.raises(ValueError, match="hf-hub:timm/davit_tiny.msft_in1k"):
        download_hf_checkpoint(name)


def test_hf_offline_not_cached(hf_cache):
    with pytest.raises(DownloadError, match=HF_REPO) as info:
        download_hf_checkpoint(f"hf-hub:{HF_REPO}")
    message = str(info.value)
    assert "offline" in message and "HF_HOME" in message and "local" in message


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_hf_offline_from_cache(hf_cache, filename):
    target = _put_in_hf_cache(hf_cache, filename)
    path = download_hf_checkpoint(f"hf-hub:{HF_REPO}")
    assert path == target
    assert load_state_dict_file(path)["head.fc.weight"].shape == (5, 2)
    assert download_hf_checkpoint(f"hf-hub:{HF_REPO}@{COMMIT}") == target


def test_hf_falls_back_to_pytorch_model_bin(monkeypatch):
    fake = FakeHub({"model.safetensors": EntryNotFoundError("no such file on the Hub")}).install(monkeypatch)
    assert download_hf_checkpoint(f"hf-hub:{HF_REPO}") == Path(f"/cache/{HF_REPO}/pytorch_model.bin")
    assert fake.probed == ["model.safetensors", "pytorch_model.bin"]
    assert fake.downloaded == ["pytorch_model.bin"]


def test_hf_without_network_fails_at_once_naming_the_cache(hf_cache, monkeypatch):
    fake = FakeHub({name: ConnectionError("Name or service not known") for name in hub.WEIGHT_FILES})
    fake.install(monkeypatch)
    started = time.perf_counter()
    with pytest.raises(DownloadError, match="unreachable.*Name or service not known") as info:
        download_hf_checkpoint(f"hf-hub:{HF_REPO}")
    assert time.perf_counter() - started < 2 and fake.downloaded == []
    assert str(hf_cache / f"models--{HF_REPO.replace('/', '--')}") in str(info.value)


def test_hf_without_network_uses_the_cache(hf_cache, monkeypatch):
    target = _put_in_hf_cache(hf_cache, "model.safetensors")
    FakeHub({"model.safetensors": TimeoutError("timed out")}).install(monkeypatch)
    assert download_hf_checkpoint(f"hf-hub:{HF_REPO}") == target


def test_hf_offline_asks_no_one(hf_cache, monkeypatch):
    fake = FakeHub({})
    monkeypatch.setattr(hub, "get_hf_file_metadata", fake.probe)
    monkeypatch.setattr(hub, "hf_hub_download", fake.download)
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE=1") as info:
        download_hf_checkpoint(f"hf-hub:{HF_REPO}")
    assert fake.probed == fake.downloaded == [] and str(hf_cache) in str(info.value)
