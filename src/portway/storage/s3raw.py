"""A blob's GET answer from S3 as a socket to splice from (the streamed pull's fast path).

aiohttp would read each piece of the body into a Python bytes object and Portway would write
it to the client again: two copies through user space per byte, which is most of a streamed
pull's CPU. Instead the S3 response's headers are parsed as usual, what aiohttp already
buffered of the body is taken, the connection's reading is paused, and the HTTP edge moves
the rest from that socket to the client's with splice(2) through a pipe (portway.http.splice),
never into Python. The connection is closed afterwards (its parser never saw the body).

Only over plain HTTP to the bucket: a TLS connection's bytes must be decrypted by Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from portway.storage.backend import ObjectMissing

if TYPE_CHECKING:
    from portway.storage.s3 import S3Backend

_MISSING = {"404", "NoSuchKey", "NotFound"}


@dataclass(slots=True)
class RawBody:
    """An object's body: `first` (bytes already read), then `remaining` bytes on `fd` (a
    non-blocking duplicate of the connection's socket). `close()` closes both."""

    first: bytes
    fd: int
    remaining: int
    _response: Any

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
        self._response.close()


def can_splice(backend: S3Backend) -> bool:
    endpoint = backend.settings.endpoint or ""
    return hasattr(os, "splice") and endpoint.startswith("http://")


async def open_raw(backend: S3Backend, key: str, full_key: str) -> RawBody | None:
    """GET the object and hand over its connection; None when this answer cannot be spliced
    (the caller streams instead). ObjectMissing when there is no such object."""
    try:
        answer = await backend.client.get_object(Bucket=backend.bucket, Key=full_key)
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code", "")) in _MISSING:
            raise ObjectMissing(key) from None
        raise
    body = answer["Body"]
    response: Any = getattr(body, "raw_stream", None)
    connection: Any = getattr(response, "connection", None)
    transport: Any = getattr(connection, "transport", None)
    length = answer.get("ContentLength")
    headers = getattr(response, "headers", {})
    plain = transport is not None and transport.get_extra_info("sslcontext") is None
    sock = transport.get_extra_info("socket") if plain else None
    if (
        sock is None
        or length is None
        or "Content-Encoding" in headers
        or "Transfer-Encoding" in headers
    ):
        body.close()
        return None
    content = response.content
    first = content.read_nowait(-1)  # what aiohttp read with the headers
    connection.protocol.pause_reading()  # no more reads: the socket is the edge's now
    if more := content.read_nowait(-1):
        first += more
    remaining = int(length) - len(first)
    if remaining < 0:
        response.close()
        return None
    return RawBody(first, os.dup(sock.fileno()), remaining, response)
