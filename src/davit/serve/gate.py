"""What every request passes through before and after the app (an ASGI middleware): a request id,
the bearer token, the body-size limit, the request timeout, the catch-all for internal failures,
the metrics and one structured access-log line.

The body is read here in full (up to the limit) and handed on to the app, so that an oversized
upload is refused as it arrives rather than after it has been spooled. An internal failure is
logged with its traceback and answered as a 500 that carries the request id and nothing else.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Collection
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .limits import Limits, Rejected, check_body_size
from .metrics import Metrics

access_log = logging.getLogger("davit.serve.access")
logger = logging.getLogger("davit.serve")

_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def error_body(code: str, message: str, request_id: str | None, **extra: Any) -> dict[str, Any]:
    """The JSON of every error answer."""
    return {"error": {"code": code, "message": message}, "request_id": request_id, **extra}


def request_id_of(scope: Scope) -> str | None:
    return scope.get("state", {}).get("request_id")


def note_error(scope: Scope, code: str) -> None:
    """Record an error answer's code for the metrics and the access log."""
    scope.setdefault("state", {})["error_code"] = code


class Gate:
    """The middleware; see the module docstring. ``open_paths`` need no token."""

    def __init__(self, app: ASGIApp, limits: Limits, metrics: Metrics, token: str | None = None,
                 open_paths: Collection[str] = ("/health",)) -> None:
        self.app = app
        self.limits = limits
        self.metrics = metrics
        self.token = token
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        request_id = given if _CLIENT_ID.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status: list[int] = []

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        started = time.perf_counter()
        self.metrics.request_started()
        try:
            async with asyncio.timeout(self.limits.timeout_s):
                await self._admit(scope, receive, send_with_id, headers)
        except TimeoutError:
            if not status:
                await self._refuse(scope, send_with_id, 503, "timeout",
                                   f"the request took longer than {self.limits.timeout_s:g} s; retry later or "
                                   "send fewer images per request")
        except Exception:
            logger.exception("request %s failed", request_id)
            if not status:
                await self._refuse(scope, send_with_id, 500, "internal_error",
                                   f"the server failed to answer; report request id {request_id}")
        finally:
            seconds = time.perf_counter() - started
            answered = status[0] if status else 499  # the client left before an answer
            code = state.get("error_code")
            self.metrics.request_finished(scope["path"], answered, seconds, code)
            client = scope.get("client")
            access_log.info(json.dumps({
                "request_id": request_id, "method": scope["method"], "path": scope["path"], "status": answered,
                "ms": round(seconds * 1000, 2), "client": f"{client[0]}:{client[1]}" if client else None,
                "images": state.get("images"), "error": code}))

    async def _admit(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        """Check the token and the body size, then run the app on the body read here."""
        if self.token is not None and scope["path"] not in self.open_paths:
            verdict = _authorization(headers, self.token)
            if verdict == "missing":
                await self._refuse(scope, send, 401, "unauthorized", "this server needs a bearer token: send "
                                                                     "'Authorization: Bearer <token>'",
                                   {"WWW-Authenticate": "Bearer"})
                return
            if verdict == "wrong":  # never echo the token that was sent
                await self._refuse(scope, send, 401, "wrong_token",
                                   "the bearer token is wrong; send the token the server was started with "
                                   "(--token-file or DAVIT_SERVE_TOKEN)",
                                   {"WWW-Authenticate": 'Bearer error="invalid_token"'})
                return
        try:
            length = headers.get("content-length")
            if length is not None and length.isdigit():
                check_body_size(int(length), self.limits)
            body = await self._read_body(receive)
        except Rejected as refusal:
            await self._refuse(scope, send, refusal.status, refusal.code, refusal.message)
            return
        if body is None:  # the client disconnected
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            check_body_size(size, self.limits)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, scope: Scope, send: Send, status: int, code: str, message: str,
                      headers: dict[str, str] | None = None) -> None:
        note_error(scope, code)
        response = JSONResponse(error_body(code, message, request_id_of(scope)), status, headers)
        await response(scope, _no_receive, send)


def _authorization(headers: Headers, token: str) -> str:
    """``"ok"``, ``"missing"`` (no header, another scheme, no credentials) or ``"wrong"``; the
    token is compared in constant time."""
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return "missing"
    return "ok" if hmac.compare_digest(credentials.strip().encode(), token.encode()) else "wrong"


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
