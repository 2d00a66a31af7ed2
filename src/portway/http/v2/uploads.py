"""/v2/<name>/blobs/uploads/[<id>]: POST (session, monolithic, mount), PATCH, PUT, GET, DELETE."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from aiohttp import web

from portway.http.v2.call import V2Call, body_chunks, content_length
from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from portway.oci.names import check_name
from portway.repos.hosted import UploadState

_CONTENT_RANGE_RE = re.compile(r"^(?:bytes[= ])?(\d+)-(\d+)(?:/(\d+|\*))?$")
UPLOAD_READ = 1024 * 1024  # bytes read from the socket at once for a blob's body


def _blob_body(request: web.Request) -> AsyncIterator[bytes]:
    """A blob's body, read from the socket in pieces of up to UPLOAD_READ bytes instead of
    asyncio's 256 KiB, with aiohttp's buffer widened to match so that reading pauses and
    resumes once per MiB instead of on every read: a quarter less CPU on the event loop per
    GB pushed (docs/benchmarks.md, "Push")."""
    transport = request.transport
    if transport is not None and hasattr(transport, "max_size"):
        transport.max_size = UPLOAD_READ  # asyncio's socket transport reads this much at once
    content = request.content
    if hasattr(content, "_high_water"):  # not for a request without a body
        # aiohttp pauses reading above the high-water mark (2 x 64 KiB by default).
        content._low_water = max(content._low_water, UPLOAD_READ)
        content._high_water = max(content._high_water, 2 * UPLOAD_READ)
    return body_chunks(request)


def _session_headers(call: V2Call, state: UploadState) -> dict[str, str]:
    return {
        "Location": call.url(f"/blobs/uploads/{state.id}"),
        "Range": f"0-{max(state.offset - 1, 0)}",
        "Docker-Upload-UUID": state.id,
        "Content-Length": "0",
    }


def _refusal_headers(call: V2Call, state: UploadState) -> dict[str, str]:
    """Session headers for an error answer, which carries an OCI error body of its own."""
    headers = _session_headers(call, state)
    del headers["Content-Length"]
    return headers


def _blob_created(call: V2Call, digest: Digest) -> web.Response:
    return web.Response(
        status=201,
        headers={
            "Location": call.url(f"/blobs/{digest}"),
            "Docker-Content-Digest": str(digest),
            "Content-Length": "0",
        },
    )


async def _drain(request: web.Request) -> None:
    async for _ in body_chunks(request):
        pass


async def start(call: V2Call) -> web.StreamResponse:
    await call.authorize("pull", "push")
    repo = call.repo.writable()
    query = call.request.query
    mount, source = query.get("mount"), query.get("from")
    if mount is not None:
        digest = Digest.parse(mount)
        if source and await _mount(call, digest, source):
            await _drain(call.request)
            return _blob_created(call, digest)
    if "digest" in query:
        digest = Digest.parse(query["digest"])
        await repo.push_blob(
            call.image, _blob_body(call.request), digest, content_length(call.request)
        )
        return _blob_created(call, digest)
    await _drain(call.request)
    state = await repo.start_upload(call.image)
    return web.Response(status=202, headers=_session_headers(call, state))


async def _mount(call: V2Call, digest: Digest, source: str) -> bool:
    """Link a blob from another image; only when the caller may read it there."""
    try:
        check_name(source)
    except RegistryError:
        return False
    found = call.resolve_name(source)
    if found is None:
        return False
    src_repo, src_image = found
    try:
        await call.ctx.authorizer.authorize(call.request, src_repo.name, source, ("pull",))
    except RegistryError:
        return False
    if not await src_repo.has_blob(src_image, digest):
        return False
    return await call.repo.writable().link_existing(call.image, digest)


def _check_content_range(call: V2Call, state: UploadState) -> int | None:
    """Validate a chunk's Content-Range against the session; returns its declared length."""
    header = call.request.headers.get("Content-Range")
    if header is None:
        return None
    m = _CONTENT_RANGE_RE.match(header.strip())
    if m is None:
        raise RegistryError(
            "RANGE_INVALID",
            f"malformed Content-Range {header[:60]!r}",
            headers=_refusal_headers(call, state),
        )
    begin, end = int(m.group(1)), int(m.group(2))
    if begin != state.offset or end < begin:
        raise RegistryError(
            "RANGE_INVALID",
            f"chunk {begin}-{end} does not continue the upload at offset {state.offset}",
            headers=_refusal_headers(call, state),
        )
    declared = end - begin + 1
    length = content_length(call.request)
    if length is not None and length != declared:
        raise RegistryError(
            "RANGE_INVALID",
            f"Content-Range covers {declared} bytes but Content-Length is {length}",
            headers=_refusal_headers(call, state),
        )
    return declared


async def patch(call: V2Call, upload_id: str) -> web.StreamResponse:
    await call.authorize("pull", "push")
    repo = call.repo.writable()
    state = await repo.upload_state(call.image, upload_id)
    declared = _check_content_range(call, state)
    expected = declared if declared is not None else content_length(call.request)
    state = await _append(call, state, declared is not None, expected)
    return web.Response(status=202, headers=_session_headers(call, state))


async def _append(
    call: V2Call, state: UploadState, ranged: bool, length: int | None
) -> UploadState:
    """Append the body; a ranged chunk is re-checked against the offset under the lock."""
    repo = call.repo.writable()
    try:
        return await repo.append_upload(
            state, _blob_body(call.request), length, state.offset if ranged else None
        )
    except RegistryError as err:
        if err.code != "RANGE_INVALID":
            raise
        current = await repo.upload_state(call.image, state.id)
        raise RegistryError(
            "RANGE_INVALID", err.message, headers=_refusal_headers(call, current)
        ) from None


async def finish(call: V2Call, upload_id: str) -> web.StreamResponse:
    await call.authorize("pull", "push")
    repo = call.repo.writable()
    state = await repo.upload_state(call.image, upload_id)
    digest_text = call.request.query.get("digest")
    if not digest_text:
        raise RegistryError("DIGEST_INVALID", "the closing PUT needs ?digest=")
    digest = Digest.parse(digest_text)
    declared = _check_content_range(call, state)
    length = declared if declared is not None else content_length(call.request)
    if length or (length is None and call.request.body_exists):
        state = await _append(call, state, declared is not None, length)
    await repo.finish_upload(state, digest)
    return _blob_created(call, digest)


async def status(call: V2Call, upload_id: str) -> web.StreamResponse:
    await call.authorize("pull", "push")
    state = await call.repo.writable().upload_state(call.image, upload_id)
    headers = _session_headers(call, state)
    return web.Response(status=204, headers=headers)


async def cancel(call: V2Call, upload_id: str) -> web.StreamResponse:
    await call.authorize("pull", "push")
    repo = call.repo.writable()
    state = await repo.upload_state(call.image, upload_id)
    await repo.cancel_upload(state)
    return web.Response(status=204)
