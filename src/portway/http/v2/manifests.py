"""/v2/<name>/manifests/<reference>: GET, HEAD, PUT, DELETE."""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from portway.http.v2.call import V2Call, read_limited
from portway.oci.digest import Digest
from portway.oci.manifest import MAX_MANIFEST_BYTES, parse_accept


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
    headers = _headers(manifest.digest, manifest.media_type, len(manifest.body))
    if call.request.method == "HEAD":
        return web.Response(status=200, headers=headers)
    return web.Response(status=200, body=manifest.body, headers=headers)


async def put(call: V2Call, reference: str) -> web.StreamResponse:
    await call.authorize("pull", "push")
    body = await read_limited(call.request, MAX_MANIFEST_BYTES)
    content_type = call.request.headers.get("Content-Type", "").split(";", 1)[0].strip() or None
    extra_tags = call.request.query.getall("tag", [])
    repo = call.repo.writable()
    if repo.moves_tags(call.image, reference, body, extra_tags):
        await call.authorize("edit")  # overwriting a tag is `edit`, not just `add`
    digest, subject = await repo.put_manifest(call.image, reference, body, content_type, extra_tags)
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


async def delete(call: V2Call, reference: str) -> web.StreamResponse:
    await call.authorize("delete")
    await call.repo.writable().delete_manifest(call.image, reference)
    call.audit("delete", reference=reference)
    return web.Response(status=202)
