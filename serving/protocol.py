"""The HTTP connection guard: uvicorn's httptools protocol with a connection cap and a head timeout.

Two things the application cannot see, because they happen before a request reaches it:

- **Idle and slow connections.** uvicorn arms its keep-alive timer only after a response, so a
  connection that never sends a complete request head (or nothing at all) stays open for as long
  as the client likes. Here a timer runs from the moment a connection opens (and again whenever a
  new request starts on it) until its request head is complete; when it fires, the connection is
  closed. The body has its own limit in the route (`runtime.body_timeout_s`, a 408).
- **Too many connections.** Each open connection costs a file descriptor and memory. Beyond
  `runtime.max_connections` a new connection is answered at once with a 503 carrying Retry-After
  (and the same JSON error shape as every other error) and closed, before anything is read.

- **Endless request heads.** httptools puts no bound on the size of a request head; uvicorn keeps
  every header in memory. More than `MAX_HEAD_BYTES` before the head is complete is answered 431
  and the connection closed.

They read the service's current config on every connection, so they follow a hot-reloaded config.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.service import ScoringService

log = logging.getLogger("serving.protocol")
# nginx allows 4 x 8 KiB of request head by default; a score request needs a few hundred bytes
MAX_HEAD_BYTES = 64 * 1024


def error_response(status: str, field: str, message: str, extra_headers: str = "") -> bytes:
    """A complete HTTP/1.1 error response (our JSON error shape) that closes the connection."""
    body = orjson.dumps({"error": {"field": field, "message": message}})
    head = (
        f"HTTP/1.1 {status}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"{extra_headers}"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol + a connection cap and a request-head timeout (see the module docstring).
    `service` is set on a subclass by `guarded_protocol`."""

    service: ScoringService

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        rt = self.service.config.runtime
        if len(self.connections) > rt.max_connections:
            self.service.metrics.connections_refused.labels("too_many").inc()
            message = (
                f"over this server's limit of {rt.max_connections} connections (runtime.max_connections)"
            )
            retry = f"retry-after: {rt.retry_after_s}\r\n"
            transport.write(error_response("503 Service Unavailable", "connections", message, retry))
            transport.close()
            return
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is not None:  # a request head is in progress
            if self._head_bytes > MAX_HEAD_BYTES:
                self.service.metrics.connections_refused.labels("head_too_large").inc()
                message = f"the request head is over {MAX_HEAD_BYTES} bytes"
                self.transport.write(
                    error_response("431 Request Header Fields Too Large", "headers", message)
                )
                self.transport.close()
                return
            self._head_bytes += len(data)
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_bytes = 0
        timeout = self.service.config.runtime.header_timeout_s
        self._head_timer = self.loop.call_later(timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        # a keep-alive connection between requests is uvicorn's (timeout_keep_alive); only a head
        # that started, or a fresh connection that never sent one, is closed here
        if self.cycle is not None and not self.cycle.response_complete:
            return
        if not self.transport.is_closing():
            self.service.metrics.connections_refused.labels("head_timeout").inc()
            self.transport.close()


def guarded_protocol(service: ScoringService) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn's `http=` setting, bound to `service`'s config and metrics."""
    return type("ScoringHttpProtocol", (GuardedHttpToolsProtocol,), {"service": service})
