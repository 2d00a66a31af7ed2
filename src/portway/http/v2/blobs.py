"""/v2/<name>/blobs/<digest>: GET (with Range, sendfile), HEAD, DELETE."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from portway.http.forwarded import IPNetwork, client_address
from portway.http.splice import splice_all
from portway.http.v2.call import V2Call
from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from portway.storage.backend import ObjectMissing
from portway.storage.body import BlobBody
from portway.upstream.singleflight import SpoolReader

if TYPE_CHECKING:
    from portway.storage.s3raw import RawBody

log = logging.getLogger("portway.http")
SMALL_BLOB = 64 * 1024


class _BlobFile(web.FileResponse):
    """A FileResponse that may be sent before aiohttp finishes the request (the metrics and
    access-log middleware sends every response itself); aiohttp's own later `prepare` would
    send the file a second time, and fails an assertion when it was sent with sendfile."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return None
        return await super().prepare(request)


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def check_range(header: str, size: int) -> None:
    """Refuse what aiohttp would answer without an OCI error body: one range, satisfiable."""
    m = _RANGE_RE.match(header.strip())
    bad = RegistryError(
        "RANGE_INVALID",
        f"unsatisfiable range {header[:60]!r} for a blob of {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )
    if m is None or (not m.group(1) and not m.group(2)):
        raise bad
    start, end = m.group(1), m.group(2)
    if start:
        if int(start) >= size or (end and int(end) < int(start)):
            raise bad
    elif int(end) == 0:
        raise bad


async def get(call: V2Call, digest_text: str) -> web.StreamResponse:
    await call.authorize("pull")
    digest = Digest.parse(digest_text)
    headers = {
        "Docker-Content-Digest": str(digest),
        "ETag": f'"{digest}"',
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }
    if call.request.method == "HEAD":
        headers["Content-Length"] = str(await call.repo.stat_blob(call.image, digest))
        return web.Response(status=200, headers=headers)
    blob = await call.repo.open_blob(call.image, digest)
    range_header = call.request.headers.get("Range")
    if range_header:
        check_range(range_header, blob.size)
    if blob.presign is not None and _redirects(call):
        url = await blob.presign(call.ctx.settings.storage.redirect_expiry)
        if url is not None:
            await _drop(blob)
            headers["Location"] = url
            headers["Content-Length"] = "0"
            del headers["Content-Type"], headers["Accept-Ranges"]
            return web.Response(status=307, headers=headers)
    if blob.local is not None:
        if blob.size <= SMALL_BLOB and not range_header:
            # Configs and small layers: one read on the loop beats a thread-pool round trip.
            try:
                data = blob.local.read_small(SMALL_BLOB)
            except FileNotFoundError:
                raise RegistryError(
                    "BLOB_UNKNOWN", f"blob {digest} is missing from storage"
                ) from None
            if len(data) != blob.size:  # changed on disk since it was checked
                raise RegistryError("BLOB_UNKNOWN", f"blob {digest} is damaged in storage")
            return web.Response(body=data, headers=headers)
        return _BlobFile(blob.local.sendfile_path(), headers=headers)
    raw = await _open_raw(call, blob) if not range_header else None
    response = web.StreamResponse(status=200, headers=headers)
    response.content_length = blob.size
    await response.prepare(call.request)
    if raw is not None:
        return await _send_raw(call, response, raw, digest)
    if blob.growing is not None:
        return await _send_growing(call, response, blob.growing, digest)
    assert blob.stream is not None
    try:
        async for chunk in blob.stream:
            await response.write(chunk)
    except Exception as exc:
        # Headers are gone already: the only honest signal left is a cut connection.
        log.warning("blob %s of %s cut short: %s", digest, call.url_name, exc)
        if call.request.transport is not None:
            call.request.transport.close()
        raise ConnectionResetError(f"blob {digest} cut short") from exc
    await response.write_eof()
    return response


def _redirects(call: V2Call) -> bool:
    """Whether this GET is answered by a presigned redirect to the bucket: the repository's
    `redirect` (else [storage] redirect): always, or auto for clients in redirect_networks
    (the client's address as the trusted proxies tell it)."""
    storage = call.ctx.settings.storage
    mode = call.repo.config.redirect or storage.redirect
    if mode == "off":
        return False
    if mode == "always":
        return True
    address = client_address(call.request, call.ctx.trusted)
    if not address:
        return False
    try:
        addr = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in _networks(storage.redirect_networks))


@functools.lru_cache(maxsize=8)
def _networks(nets: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in nets)


async def _drop(blob: BlobBody) -> None:
    """Close the stream a redirect does not send (it never started: no request was made)."""
    close = getattr(blob.stream, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


async def _open_raw(call: V2Call, blob: BlobBody) -> RawBody | None:
    """The storage answer's socket to splice from, when both ends are plain sockets."""
    transport = call.request.transport
    if (
        blob.raw is None
        or transport is None
        or transport.get_extra_info("sslcontext") is not None
        or transport.get_extra_info("socket") is None
    ):
        return None
    try:
        raw = await blob.raw()
    except ObjectMissing:
        raise RegistryError("BLOB_UNKNOWN", f"blob {blob.digest} is missing from storage") from None
    if raw is not None:
        await _drop(blob)
    return raw


@contextlib.contextmanager
def _cut_short(call: V2Call, digest: Digest) -> Iterator[None]:
    """A body that fails after its headers went out: logged, and the connection cut (the
    client sees a short body, never a complete-looking wrong one)."""
    try:
        yield
    except ConnectionResetError:
        raise
    except Exception as exc:
        log.warning("blob %s of %s cut short: %s", digest, call.url_name, exc)
        if call.request.transport is not None:
            call.request.transport.close()
        raise ConnectionResetError(f"blob {digest} cut short") from exc


async def _send_raw(
    call: V2Call, response: web.StreamResponse, raw: RawBody, digest: Digest
) -> web.StreamResponse:
    """The headers and what the storage client had read, then the rest spliced from the
    storage's socket to the client's (the kernel copies it; Python never holds it)."""
    transport = call.request.transport
    try:
        with _cut_short(call, digest):
            await response.write(raw.first)  # sends the buffered headers even when empty
            while transport is not None and transport.get_write_buffer_size():
                if transport.is_closing():
                    raise ConnectionResetError("client went away")
                await asyncio.sleep(0.001)  # splice must not overtake what aiohttp still holds
            if transport is None or transport.is_closing():
                raise ConnectionResetError("client went away")
            await splice_all(raw.fd, transport.get_extra_info("socket").fileno(), raw.remaining)
    finally:
        raw.close()
    await response.write_eof()
    return response


async def _send_growing(
    call: V2Call, response: web.StreamResponse, reader: SpoolReader, digest: Digest
) -> web.StreamResponse:
    """Send a file another task is still writing (a proxy's cache fill), with sendfile for
    each stretch written so far; a failed fill cuts the connection."""
    loop = asyncio.get_running_loop()
    transport = call.request.transport
    try:
        with _cut_short(call, digest), reader.open_file() as f:
            while count := await reader.more():
                if transport is None or transport.is_closing():
                    raise ConnectionResetError("client went away")
                await loop.sendfile(transport, f, reader.position, count)
                reader.position += count
    finally:
        reader.close()
    await response.write_eof()
    return response


async def delete(call: V2Call, digest_text: str) -> web.StreamResponse:
    await call.authorize("delete")
    await call.repo.writable().delete_blob(call.image, Digest.parse(digest_text))
    call.audit("delete", blob=digest_text)
    return web.Response(status=202)
