"""uvicorn's HTTP protocol with TCP_NODELAY set on every connection.

With `--workers N`, uvicorn binds the listening socket itself with `proto` 0, so asyncio does not set
TCP_NODELAY on accepted connections (uvicorn issue #3149, Linux): each keep-alive response then waits
~40 ms for the client's delayed ACK, which caps a worker at ~25 requests/s per connection. Setting the
option here works for one worker or many, with h11 or httptools.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from uvicorn.protocols.http.auto import AutoHTTPProtocol


class NoDelayHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
