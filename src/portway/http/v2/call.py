"""One v2 request after routing: the repository, the image inside it, and how the client
names things, so every URL we hand back is the client's own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web

from portway.http.context import CONTEXT_KEY, AppContext
from portway.oci.errors import RegistryError
from portway.repos.base import Repository


@dataclass(frozen=True, slots=True)
class V2Call:
    request: web.Request
    ctx: AppContext
    repo: Repository
    image: str  # the image name inside the repository
    url_name: str  # the name as the client addresses it (with "<repo>/" on repository paths)
    prefix: str  # client-visible path before /v2
    external_url: str | None
    shared: bool = False  # reached by repository path: names start with "<repo>/"

    def resolve_name(self, name: str) -> tuple[Repository, str] | None:
        """Another image addressed the way this client addresses images (for mount `from`)."""
        if not self.shared:
            return self.repo, name
        repo_name, _, image = name.partition("/")
        repo = self.ctx.repos.get(repo_name)
        if repo is None or not image or not repo.config.path_routing:
            return None
        return repo, image

    def url(self, path: str) -> str:
        """A URL for a path under /v2 of this route; relative unless external_url is set."""
        full = f"{self.prefix}/v2/{quote(self.url_name)}{path}"
        if self.external_url:
            return self.external_url.rstrip("/") + full
        return full

    def audit(self, event: str, **detail: str) -> None:
        self.ctx.authorizer.audit(
            self.request, event, self.repo.name, {"image": self.url_name, **detail}
        )

    async def authorize(self, *actions: str) -> None:
        await self.ctx.authorizer.authorize(self.request, self.repo.name, self.url_name, actions)


def content_length(request: web.Request) -> int | None:
    value = request.headers.get("Content-Length")
    if value is None:
        return None
    if not value.isdigit():
        raise RegistryError("SIZE_INVALID", "Content-Length is not a number")
    return int(value)


async def body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as it arrives, without holding it whole; a body that stalls for
    `[server] body_idle_timeout` seconds is refused."""
    idle = request.app[CONTEXT_KEY].settings.server.body_idle_timeout
    while True:
        try:
            async with asyncio.timeout(idle):
                # One buffered piece at a time: readany() would join all that is buffered
                # (a copy of the body). An empty piece is a chunk boundary, or the end.
                chunk, boundary = await request.content.readchunk()
        except TimeoutError:
            raise RegistryError(
                "BLOB_UPLOAD_INVALID",
                f"the request body sent nothing for {idle:g} s",
                close_connection=True,
            ) from None
        except ConnectionResetError:
            # The client went away mid-body. Callers cut back what they wrote; the answer
            # goes nowhere, but raising a RegistryError keeps it a quiet, ordinary refusal.
            raise RegistryError(
                "BLOB_UPLOAD_INVALID", "the client closed the connection mid-body"
            ) from None
        if not chunk:
            if boundary and not request.content.at_eof():
                continue
            break
        yield chunk


async def read_limited(request: web.Request, limit: int) -> bytes:
    length = content_length(request)
    if length is not None and length > limit:
        raise RegistryError(
            "MANIFEST_INVALID", f"manifest is larger than {limit} bytes", status=413
        )
    parts: list[bytes] = []
    total = 0
    async for chunk in body_chunks(request):
        total += len(chunk)
        if total > limit:
            raise RegistryError(
                "MANIFEST_INVALID", f"manifest is larger than {limit} bytes", status=413
            )
        parts.append(chunk)
    body = b"".join(parts)
    if length is not None and len(body) != length:
        raise RegistryError("SIZE_INVALID", "request body shorter than Content-Length")
    return body


def query_int(request: web.Request, key: str) -> int | None:
    value = request.query.get(key)
    if value is None or value == "":
        return None
    if not value.isdigit() or len(value) > 9:
        raise RegistryError("PAGINATION_NUMBER_INVALID", f"{key} must be a non-negative integer")
    return int(value)
