"""/v2/<name>/manifests/<reference>: GET, HEAD, PUT, DELETE."""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from portway.http.v2.call import V2Call, read_limited
from portway.oci import mediatypes as mt
from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from portway.oci.manifest import (
    MAX_MANIFEST_BYTES,
    default_platform_child,
    negotiate,
    parse_accept,
)

MAX_TAGS_PER_PUT = 100


def _headers(digest: str, media_type: str, size: int) -> dict[str, str]:
    return {
        "Content-Type": media_type,
        "Docker-Content-Digest": digest,
        "ETag": f'"{digest}"',
        "Content-Length": str(size),
    }


async def get(call: V2Call, reference: str) -> web.StreamResponse:
    await call.authorize("pull")
    accept = parse_accept(call.request.headers.getall("Accept", []))
    manifest = await call.repo.get_manifest(call.image, reference, accept)
    if not negotiate(manifest.media_type, accept) and manifest.media_type in mt.INDEXES:
        # A client that takes no index (old Docker): serve the linux/amd64 image, as
        # distribution does; otherwise the stored manifest as it is.
        child = default_platform_child(manifest.body, accept)
        if child is not None:
            manifest = await call.repo.get_manifest(call.image, child, accept)
    headers = _headers(manifest.digest, manifest.media_type, len(manifest.body))
    if call.request.method == "HEAD":
        return web.Response(status=200, headers=headers)
    return web.Response(status=200, body=manifest.body, headers=headers)


async def put(call: V2Call, reference: str) -> web.StreamResponse:
    await call.authorize("pull", "push")
    body = await read_limited(call.request, MAX_MANIFEST_BYTES)
    content_type = call.request.headers.get("Content-Type", "").split(";", 1)[0].strip() or None
    extra_tags = call.request.query.getall("tag", [])
    if len(extra_tags) > MAX_TAGS_PER_PUT:
        raise RegistryError(
            "TAG_INVALID", f"at most {MAX_TAGS_PER_PUT} tags per manifest push", status=414
        )
    digest, subject = await call.repo.writable().put_manifest(
        call.image,
        reference,
        body,
        content_type,
        extra_tags,
        edit_refusal=await _edit_refusal(call),
    )
    headers = CIMultiDict(
        {"Location": call.url(f"/manifests/{digest}"), "Docker-Content-Digest": digest}
    )
    if subject:
        headers["OCI-Subject"] = subject
    call.audit("push", reference=reference, digest=digest)
    # One OCI-Tag per tag this request set (the spec's answer to `?tag=` on a PUT by digest).
    applied = extra_tags if Digest.is_digest(reference) else [reference, *extra_tags]
    for tag in dict.fromkeys(applied):
        headers.add("OCI-Tag", tag)
    return web.Response(status=201, headers=headers)


async def _edit_refusal(call: V2Call) -> RegistryError | None:
    """Why this caller may not move an existing tag (`edit`, not just `add`), or None.

    Asked before the push; the repository applies it only if, inside the transaction that
    sets the tags, one of them turns out to point at another manifest already."""
    try:
        await call.authorize("edit")
    except RegistryError as refusal:
        return refusal
    return None


async def delete(call: V2Call, reference: str) -> web.StreamResponse:
    await call.authorize("delete")
    await call.repo.writable().delete_manifest(call.image, reference)
    call.audit("delete", reference=reference)
    return web.Response(status=202)
