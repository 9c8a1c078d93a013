"""Running the app under uvicorn: loopback by default, graceful shutdown on SIGINT/SIGTERM (no new
connections; the accepted requests are answered first, for up to ``graceful_timeout_s``)."""
from __future__ import annotations

import ipaddress
import logging
from concurrent.futures import ThreadPoolExecutor

from ..errors import require
from .app import ServeSettings, create_app
from .model import ServedModel

logger = logging.getLogger("davit.serve")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(served: ServedModel, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
               graceful_timeout_s: int = 30, executor: ThreadPoolExecutor | None = None) -> None:
    """Serve until interrupted, running the model on ``executor`` (the thread it was loaded on:
    :func:`davit.serve.app.model_thread`)."""
    require("uvicorn", "serve", "davit serve")
    import uvicorn

    if not is_loopback(host) and settings.token is None:
        logger.warning("serving on %s without a token: anyone who can reach this address can use the model; "
                       "give --token-file or DAVIT_SERVE_TOKEN", host)
    config = uvicorn.Config(create_app(served, settings, executor), host=host, port=port, log_config=None,
                            access_log=False, lifespan="on", timeout_graceful_shutdown=graceful_timeout_s)
    uvicorn.Server(config).run()
