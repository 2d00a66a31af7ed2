"""Requests refused by the HTTP parser, before any handler runs, still leave as OCI error JSON.

aiohttp answers a request it cannot parse (a bad `Content-Length`, an oversized header, a
broken chunk, `Transfer-Encoding` together with `Content-Length`) itself, in plain text, and
logs a traceback at error level. A client mistake is not a server error: here it gets the same
error JSON and `Docker-Distribution-API-Version` header as every other refusal, and the log
gets one line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.web_request import BaseRequest

from portway.http.errors import API_VERSION, error_response, parser_error

log = logging.getLogger("portway.http")


class RegistryRequestHandler(web_protocol.RequestHandler):
    """Also times out a request header that does not arrive: a new connection, and a kept-alive
    one once the next request has begun, must deliver a complete header within
    `header_timeout` seconds (aiohttp's own `keepalive_timeout` closes idle ones)."""

    header_timeout: float = 30.0
    _header_deadline: asyncio.TimerHandle | None = None
    # The bearer token this connection sent last, with the route it was for and its cache
    # key (portway.auth.tokencache.token_key): a client sends one token request after
    # request, so its key is worked out once per connection, not hashed again each time.
    token_memo: tuple[str, str | None, bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def waiting_for_request(self) -> bool:
        """Open and doing nothing but wait for (the rest of) a request header."""
        return (
            self.transport is not None
            and not self._force_close
            and not self._request_in_progress
            and not self._messages
            and self._waiter is not None
            and not self._waiter.done()
        )

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None and self.header_timeout > 0:
            self._header_deadline = self._loop.call_later(
                self.header_timeout, self._header_timed_out
            )

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_timed_out(self) -> None:
        self._header_deadline = None
        if self.waiting_for_request():
            log.debug(
                "closed a connection from %s: no complete request header within %.0fs",
                self.peername,
                self.header_timeout,
            )
            self.force_close()

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        started = self._request_count
        super().data_received(data)
        if self._request_count > started:  # a complete header arrived
            self._disarm_header_deadline()
        elif data and not self._request_in_progress and not self._messages:
            self._arm_header_deadline()  # the first bytes of the next request
        request = self._current_request
        if request is None or len(self._messages) == queued:
            return
        failure = self._messages[-1][0]
        if isinstance(failure, web_protocol._ErrInfo) and failure.exc is not None:
            # A body the parser refused after its handler started (a broken chunk in a later
            # packet): aiohttp queues the error for after the request and leaves the body
            # waiting for bytes that never come. Hand the error to the body's reader; the body
            # then counts as ended, so the connection closes after the answer instead of
            # lingering to drain it.
            request._cancel(failure.exc)
            request.content.feed_eof()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the parser's error")
        err = parser_error(status, exc, message)
        # Docker, podman and skopeo try HTTPS first on every command: a TLS hello on a plain
        # port is a client probing, not a mistake worth an INFO line each time.
        level = logging.DEBUG if "HTTPS traffic on an HTTP port" in err.message else logging.INFO
        log.log(level, "refused a malformed request from %s: %s", request.remote, err.message)
        response = error_response(err)
        response.headers[API_VERSION[0]] = API_VERSION[1]
        response.force_close()
        return response


class RegistryServer(web.Server):
    """`web.Server` whose connections use `RegistryRequestHandler`; tells a listener's
    connection gate when a connection closes (see `portway.http.listeners`)."""

    header_timeout: float = 30.0
    on_connection_lost: Callable[[], None] | None = None

    def __call__(self) -> web_protocol.RequestHandler:
        handler = RegistryRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.header_timeout = self.header_timeout
        return handler

    def connection_lost(
        self, handler: web_protocol.RequestHandler, exc: BaseException | None = None
    ) -> None:
        super().connection_lost(handler, exc)
        if self.on_connection_lost is not None:
            self.on_connection_lost()

    def waiting_connections(self) -> list[Callable[[], None]]:
        """Closers of the connections only waiting for a request: those that never sent a
        complete one first, then idle kept-alive ones; oldest first within each."""
        waiting = [
            h
            for h in self._connections
            if isinstance(h, RegistryRequestHandler) and h.waiting_for_request()
        ]
        waiting.sort(key=lambda h: h._request_count > 0)  # stable: keeps the age order
        return [h.force_close for h in waiting]


class RegistryRunner(web.AppRunner):
    """`AppRunner` serving through `RegistryServer`."""

    def __init__(self, app: web.Application, *, header_timeout: float = 30.0, **kwargs: Any):
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The application builds a plain Server with its own arguments; only the handler
        # class differs, so adopt that instance rather than rebuilding it.
        server.__class__ = RegistryServer
        assert isinstance(server, RegistryServer)
        server.header_timeout = self._header_timeout
        return server
