"""How uvicorn runs the app: the options `mrdib serve` passes, and an HTTP protocol that bounds request heads.

uvicorn's default HTTP parser (httptools, i.e. llhttp) has no limit on the size of a request line and its
headers: a client could send a 64 MB header, which was buffered whole and answered 200. `LimitedHttpTools`
counts the bytes of each request's head and, beyond `MRDIB_MAX_HEADER_BYTES`, answers 431 (Request Header
Fields Too Large) and closes the connection. What it holds meanwhile is bounded by the limit plus one read
(at most 256 KiB). Two counts of each head, either of which over the limit refuses it, and neither of which can
exceed the head's true size (so a head under the limit is never refused, however the network splits it): the
reads that arrived while inside the head, after the read that began it (bounds memory before anything is
parsed: a header that never ends), and the parsed bytes (request target + header names and values). Summing
the two instead counted a head that came in several reads about twice, refusing heads of half the limit.
Without httptools, uvicorn's h11 protocol gets the same limit through h11's own (`h11_max_incomplete_event_size`),
answered 400 and closed.

Behind a reverse proxy the proxy's limits apply first (deploy/README.md); these are the service's own.
"""

from __future__ import annotations

import logging
from typing import Any

from service.settings import Settings

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn without httptools: the h11 path below
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

log = logging.getLogger("uvicorn.error")

_REASON = b"request line and headers exceed the limit of this server"


if HttpToolsProtocol is not None:

    class LimitedHttpTools(HttpToolsProtocol):  # type: ignore[misc,valid-type]
        """uvicorn's httptools protocol with a bound on each request's head (the limit travels in the uvicorn
        config's `h11_max_incomplete_event_size`, the same number the h11 protocol uses)."""

        def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(config, *args, **kwargs)
            self.max_head = int(config.h11_max_incomplete_event_size or 16 * 1024)
            self.head_bytes = 0  # parsed bytes of the head being read (target + header names and values)
            self.head_read = 0  # bytes of the reads after the one that began the head, while still inside it
            self.in_head = False
            self.head_began = False  # a message began during the current read
            self.head_too_large = False

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.in_head, self.head_began, self.head_bytes, self.head_read = True, True, 0, 0

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            self.head_bytes += len(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            super().on_header(name, value)
            self.head_bytes += len(name) + len(value) + 4

        def on_headers_complete(self) -> None:
            self.in_head = False
            if self.head_bytes > self.max_head:
                self.head_too_large = True
                # The parser turns this into an error; uvicorn answers it through send_400_response (below).
                raise ValueError("request head too large")
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            self.head_began = False
            super().data_received(data)
            if self.in_head and not self.head_too_large and self.transport is not None:
                # Still inside a head after this read: unless a message began in it, all of it is head bytes held
                # by the parser. Counting whole reads bounds memory before the head is parsed.
                if not self.head_began:
                    self.head_read += len(data)
                if max(self.head_read, self.head_bytes) > self.max_head:
                    self.head_too_large = True
                    self.send_400_response("")

        def send_400_response(self, msg: str) -> None:
            if not self.head_too_large:
                super().send_400_response(msg)
                return
            if self.transport is None or self.transport.is_closing():
                return
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
            log.warning("request head over %d bytes refused (431) from %s", self.max_head, client)
            self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; "
                                 b"charset=utf-8\r\nconnection: close\r\ncontent-length: "
                                 + str(len(_REASON)).encode() + b"\r\n\r\n" + _REASON)
            self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run / uvicorn.Config that every way of serving the app shares."""
    return {
        "http": LimitedHttpTools if HttpToolsProtocol is not None else "h11",
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "access_log": settings.access_log,
        "server_header": False,  # no `server: uvicorn` banner
    }
