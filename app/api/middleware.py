"""Pure ASGI middleware (no BaseHTTPMiddleware: it would copy every body and cost each request ~100 µs)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_body
from app.core.logs import request_id
from app.core.metrics import Metrics

# Set in the request scope by the routes that answer from an A/B variant: its name (a label of the request
# metrics).
VARIANT = "xrec.variant"
# Set in the request scope by a streaming route whose body failed after the 200 headers went out (it
# ended the stream with an error line): the request is counted as a 500, not as the 200 that was sent.
STREAM_FAILED = "xrec.stream_failed"


# A client's own X-Request-ID is kept when it is this tame (it goes into logs and a response header).
_CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


class RequestContext:
    """Gives each request an id: the client's `X-Request-ID` when it is a plain token, else a new one. It
    is in every log line written while the request is served, and in the response's X-Request-ID header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                if _CLIENT_REQUEST_ID.fullmatch(value):
                    rid = value
                break
        rid = rid or secrets.token_hex(8).encode()
        token = request_id.set(rid.decode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class RequestMetrics:
    """Latency histogram and status counter per route template (not per raw path: ids would explode the
    label set). Streaming responses are timed to their last byte; one that fails midway counts as a 500."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            status = 500  # also when it fails after the response started
            raise
        finally:
            if scope.get(STREAM_FAILED):
                status = 500
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            variant = scope.get(VARIANT, "")
            self.metrics.request_seconds.observe(time.perf_counter() - started, method=method, route=path,
                                                 variant=variant)
            self.metrics.requests.inc(method=method, route=path, variant=variant, status=str(status))


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


class BodyReadTimeout:
    """408 when a request body has not arrived in full `timeout` seconds after the app started reading it
    (a client that sends less than its Content-Length, or drips it, would otherwise hold the connection
    and a worker's request slot forever: uvicorn's keep-alive timeout only covers idle connections). Once
    the body is complete, reads pass through untimed (a streaming response listens for a disconnect)."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.timeout or self.timeout <= 0:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        complete = timed_out = started = False

        async def timed_receive() -> Message:
            nonlocal deadline, complete, timed_out
            if complete:
                return await receive()
            if deadline is None:
                deadline = loop.time() + self.timeout
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                timed_out = True
                raise _TooSlow from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            # After a timeout, what the app answers (FastAPI turns a failed body read into 400) is dropped
            # for our 408.
            if not timed_out:
                started = True
                await send(message)

        with contextlib.suppress(_TooSlow):
            await self.app(scope, timed_receive, guarded_send)
        if timed_out and not started:
            await send_error(send, 408, f"the request body did not arrive within {self.timeout:g} s", ["body"],
                             close=True)


class BodySizeLimit:
    """413 for bodies over the limit: at once from Content-Length, or while a chunked body streams in."""

    def __init__(self, app: ASGIApp, default: int, by_prefix: dict[str, int]) -> None:
        self.app = app
        self.default = default
        self.by_prefix = by_prefix

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.by_prefix.items():
            if path.startswith(prefix):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    await _reject(send, limit)
                    return
        received = 0
        exceeded = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # Once over the limit, whatever the app answers (FastAPI turns a failed body read into 400)
            # is dropped for our 413.
            if not exceeded:
                await send(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if exceeded:
            await _reject(send, limit)


async def _reject(send: Send, limit: int) -> None:
    await send_error(send, 413, f"request body larger than {limit} bytes", ["body"])


async def send_error(send: Send, status: int, msg: str, loc: list[str | int], close: bool = False) -> None:
    """An error response in the one shape (`ErrorResponse`), from middleware; `close`: ask the server to
    close the connection after it (the rest of the body will not be read)."""
    body = error_body(status, msg, loc)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
