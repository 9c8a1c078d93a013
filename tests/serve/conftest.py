"""Real servers for the serve tests: uvicorn in a thread on a free loopback port, serving a tiny
random-weights classifier saved as a save_pretrained folder (class names, 32x32 preprocessing)."""
from __future__ import annotations

import dataclasses
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import MINI_ARCH_JSON

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import uvicorn

from davit import get_model
from davit.checkpoint.card import Preprocessing
from davit.checkpoint.pretrained import save_pretrained
from davit.serve.app import ServeSettings, create_app
from davit.serve.limits import Limits
from davit.serve.model import ServedModel, load_served_model

TINY_ARCH = MINI_ARCH_JSON
CLASSES = ("cat", "dog", "cup")
LIMITS = Limits(max_body_bytes=256 * 1024, max_pixels=300_000, max_images=4, timeout_s=20.0)


class Server:
    """A running server: its base URL and the uvicorn server (set ``should_exit`` to stop it)."""

    def __init__(self, url: str, server: uvicorn.Server, thread: threading.Thread) -> None:
        self.url = url
        self.server = server
        self.thread = thread
        self.http = httpx.Client(base_url=url, timeout=30)  # one client: making one costs ~0.2 s


@contextmanager
def running(app) -> Iterator[Server]:
    """Serve ``app`` with uvicorn in a thread on a free loopback port until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    live = Server(f"http://127.0.0.1:{port}", server, thread)
    try:
        yield live
    finally:
        live.http.close()
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="package")
def tiny_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = get_model(TINY_ARCH, num_classes=len(CLASSES))
    model.card = dataclasses.replace(model.card, class_names=CLASSES, preprocessing=Preprocessing(36, 32))
    model.class_names = list(CLASSES)
    return save_pretrained(model, tmp_path_factory.mktemp("served") / "tiny")


@pytest.fixture(scope="package")
def served(tiny_folder) -> ServedModel:
    return load_served_model(str(tiny_folder))


@pytest.fixture(scope="package")
def server(served) -> Iterator[Server]:
    """The open server (no token) most tests talk to."""
    with running(create_app(served, ServeSettings(max_batch_size=4, max_wait_ms=20, limits=LIMITS))) as live:
        yield live


@pytest.fixture(scope="package")
def photos(tmp_path_factory) -> dict[str, bytes]:
    """Small encoded photos: a JPEG, a PNG with alpha and a grey JPEG (different sizes)."""
    rng = np.random.default_rng(0)
    encoded = {}
    for name, mode, size, fmt in [("a.jpg", "RGB", (48, 40), "JPEG"), ("b.png", "RGBA", (40, 64), "PNG"),
                                  ("c.jpg", "L", (33, 33), "JPEG")]:
        channels = len(mode)
        pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        encoded[name] = buffer.getvalue()
    return encoded
