"""Pure-ASGI middlewares: request guards (size, content type) and latency metrics.

Pure ASGI rather than BaseHTTPMiddleware so that the body is inspected before FastAPI parses it
and so that streaming and exceptions behave exactly as without middleware.
"""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

_BODY_METHODS = {"POST", "PUT", "PATCH"}
# Methods outside this set are labelled "other": a client can send any token as a method, and each distinct
# label value would be a new time series forever.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class RequestGuard:
    """413 for bodies over `max_body` bytes (declared or streamed), 415 for non-JSON bodies."""

    def __init__(self, app: ASGIApp, max_body: int):
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        # The two headers this needs, in one pass over the raw list (ASGI servers send names lower-cased; this is
        # what starlette's Headers.get compares too, without building the object on every request).
        declared = content_type = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                if declared is None:
                    declared = value.decode("latin-1")
            elif name == b"content-type" and content_type is None:
                content_type = value.decode("latin-1")
        content_type = content_type or ""
        if declared is not None:
            if not declared.isdigit():
                await _send_json(send, 400, "invalid Content-Length header")
                return
            if int(declared) > self.max_body:
                await _send_json(send, 413, f"request body of {declared} bytes exceeds the limit of "
                                            f"{self.max_body} bytes")
                return
            # The server enforces Content-Length framing (no more bytes than declared reach the app), so a
            # declared body within the limit needs no counting: pass `receive` through instead of buffering and
            # replaying the body (the common case, and a per-request copy saved).
            if int(declared) > 0 and not _is_json(content_type):
                await self._unsupported(send, content_type)
                return
            await self.app(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_body:
                await _send_json(send, 413, f"request body exceeds the limit of {self.max_body} bytes")
                return
        if body and not _is_json(content_type):
            await self._unsupported(send, content_type)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _unsupported(send: Send, content_type: str) -> None:
        got = content_type or "none"
        await _send_json(send, 415, f"unsupported content type {got!r}; send application/json")


class LatencyMetrics:
    """Observe every HTTP request in the latency histogram, labelled by route template (bounded cardinality)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _KNOWN_METHODS else "other"
            self.metrics.observe_latency(path, method, status, time.perf_counter() - start)
