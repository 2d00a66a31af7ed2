"""Requests refused by the HTTP parser, before any handler runs, still leave as OCI error JSON.

aiohttp answers a request it cannot parse (a bad `Content-Length`, an oversized header, a
broken chunk, `Transfer-Encoding` together with `Content-Length`) itself, in plain text, and
logs a traceback at error level. A client mistake is not a server error: here it gets the same
error JSON and `Docker-Distribution-API-Version` header as every other refusal, and the log
gets one line.
"""

from __future__ import annotations

import logging

from aiohttp import web, web_protocol
from aiohttp.web_request import BaseRequest

from portway.http.errors import API_VERSION, error_response, parser_error

log = logging.getLogger("portway.http")


class RegistryRequestHandler(web_protocol.RequestHandler):
    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
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
    """`web.Server` whose connections use `RegistryRequestHandler`."""

    def __call__(self) -> web_protocol.RequestHandler:
        return RegistryRequestHandler(self, loop=self._loop, **self._kwargs)


class RegistryRunner(web.AppRunner):
    """`AppRunner` serving through `RegistryServer`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The application builds a plain Server with its own arguments; only the handler
        # class differs, so adopt that instance rather than rebuilding it.
        server.__class__ = RegistryServer
        return server
