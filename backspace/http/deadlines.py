"""Read deadlines for HTTP connections: a client that is slow to send is cut off.

uvicorn's keep-alive timeout starts only after a response: a connection that sends nothing, half
a request line, headers one byte at a time, or half a body was kept forever, each holding a file
descriptor (measured: still open after 6 s with a 5 s keep-alive timeout). This protocol (uvicorn's
httptools one) gives the headers of each request `header_timeout` seconds from the connection
or the request's first byte, and its body `body_timeout` seconds after the headers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)


class DeadlineProtocol(HttpToolsProtocol):
    header_timeout = 15.0
    body_timeout = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._began = False  # a request has started arriving and its headers have not ended

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._began = True
        if self._deadline is None:  # a later request on a kept-alive connection
            self._arm(self.header_timeout, self._headers_late)

    def on_headers_complete(self) -> None:
        self._began = False
        self._arm(self.body_timeout, self._body_late)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float, expire: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        """Headers not complete in time: 408 to a client that began a request, then close."""
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._began:
            detail = (
                f"the request's headers did not arrive within {self.header_timeout:g} s "
                "(BACKSPACE_HEADER_TIMEOUT)"
            )
            body = json.dumps({"detail": detail}).encode()
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
        log.info("closed a connection whose request headers did not arrive in time")
        self.transport.close()

    def _body_late(self) -> None:
        """Body not complete in time: close; the handler sees the client leave."""
        self._deadline = None
        if not self.transport.is_closing():
            log.info("closed a connection whose request body did not arrive in time")
            self.transport.close()


def with_deadlines(header_timeout: float, body_timeout: float) -> type[DeadlineProtocol]:
    """The protocol class for uvicorn's `http=` with these deadlines."""
    return type(
        "DeadlineProtocol",
        (DeadlineProtocol,),
        {"header_timeout": header_timeout, "body_timeout": body_timeout},
    )
