"""``davit serve`` as a user runs it: a subprocess, the token from the environment, SIGTERM."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from davit.cli.app import build_parser, run_subcommand
from davit.cli.serve import bearer_token


def test_serve_options_parse():
    args = build_parser().parse_args(["serve", "tiny", "--random-weights", "--backend", "onnxruntime",
                                      "--max-batch-size", "8", "--max-wait-ms", "0", "--token", "t"])
    assert (args.model, args.random_weights, args.backend, args.max_batch_size, args.max_wait_ms, args.token) == \
        ("tiny", True, "onnxruntime", 8, 0.0, "t")
    assert args.host == "127.0.0.1"  # loopback unless asked


def test_a_port_out_of_range_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "tiny", "--port", "99999"])
    assert "must be a TCP port from 0 to 65535, got 99999" in capsys.readouterr().err


@pytest.mark.slow
def test_davit_serve_subprocess_token_and_graceful_sigterm(tiny_folder, photos):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "davit", "serve", str(tiny_folder), "--port", str(port), "--max-wait-ms", "1500"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "DAVIT_SERVE_TOKEN": "from-env"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "davit serve did not start"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert httpx.get(f"{url}/v1/models").status_code == 401
        answers: list[httpx.Response] = []
        sender = threading.Thread(target=lambda: answers.append(httpx.post(
            f"{url}/v1/predict", files=[("images", ("a.jpg", photos["a.jpg"]))],
            headers={"Authorization": "Bearer from-env", "X-Request-ID": "in-flight"}, timeout=30)))
        sender.start()
        time.sleep(0.5)  # the request waits in the batcher
        server.send_signal(signal.SIGTERM)
        sender.join(timeout=30)
        output, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert answers and answers[0].status_code == 200, output
    assert answers[0].json()["results"][0]["pred_class"] in ("cat", "dog", "cup")
    assert '"request_id": "in-flight"' in output and '"status": 200' in output  # the access log
    assert server.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has stopped


@pytest.mark.parametrize("given", [["--token", ""], ["--token", "  "], ["--token-file", "blank"],
                                   ["--token-file", "missing"], ["env", " "]])
def test_an_empty_token_never_starts_an_open_server(given, tiny_folder, tmp_path, monkeypatch, capsys):
    (tmp_path / "blank").write_text("\n")
    monkeypatch.delenv("DAVIT_SERVE_TOKEN", raising=False)
    if given[0] == "env":
        monkeypatch.setenv("DAVIT_SERVE_TOKEN", given[1])
        given = []
    elif given[0] == "--token-file":
        given = ["--token-file", str(tmp_path / given[1])]
    assert run_subcommand("serve", [str(tiny_folder), "--port", "1", *given]) == 1  # refused before any port is opened
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and ("empty bearer token" in error or "cannot read it" in error)


def test_the_token_file_is_read_and_stripped(tmp_path, monkeypatch):
    (tmp_path / "token").write_text("s3cret\n")
    monkeypatch.setenv("DAVIT_SERVE_TOKEN", "from-env")
    args = build_parser().parse_args(["serve", "tiny", "--token-file", str(tmp_path / "token")])
    assert bearer_token(args) == "s3cret"
    assert bearer_token(build_parser().parse_args(["serve", "tiny"])) == "from-env"
    monkeypatch.delenv("DAVIT_SERVE_TOKEN")
    assert bearer_token(build_parser().parse_args(["serve", "tiny"])) is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "tiny", "--token", "a", "--token-file", "b"])
