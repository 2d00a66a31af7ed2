"""Client for a remote v2 registry, as a proxy repository uses it.

One ``UpstreamRegistry`` per proxy repository, sharing the application's
``aiohttp.ClientSession``. Every method either returns what was asked for or raises an
``UpstreamError`` whose ``kind`` says what went wrong; with a breaker attached, failures are
counted and a blocked upstream is not contacted at all.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict

from portway.oci.names import NAME_RE, TAG_RE

from .answers import error_of
from .auth import UpstreamAuth
from .breaker import BreakerState, UpstreamBreaker
from .challenge import parse_challenges
from .content import (
    GENERIC_TYPES,
    PingResult,
    SearchPage,
    TagPage,
    UpstreamBlob,
    UpstreamManifest,
    UpstreamManifestInfo,
    int_or,
    is_digest,
    media_type_of,
    next_last_from_link,
    verified_digest,
)
from .errors import (
    UpstreamError,
    UpstreamNotFoundError,
    UpstreamServerError,
    UpstreamTruncatedError,
    from_client_exception,
)

DOCKER_HUB_HOSTS = frozenset({"registry-1.docker.io", "docker.io", "index.docker.io"})
DOCKER_HUB_REGISTRY = "https://registry-1.docker.io"
DOCKER_HUB_INDEX = "https://index.docker.io"  # where Docker Hub answers /v1/search

MAX_MANIFEST_SIZE = 4 * 1024 * 1024  # distribution's own limit

_REDIRECTS = {301, 302, 303, 307, 308}


class UpstreamRegistry:
    """A remote v2 registry: Docker Hub, distribution, Harbor, another Portway...

    ``remote_url`` may carry a path prefix (``http://host/repository/hosted``); the v2 API
    is expected under it. On Docker Hub, one-component image names get ``library/``.
    """

    def __init__(
        self,
        remote_url: str,
        session: aiohttp.ClientSession,
        *,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        manifest_timeout: float = 60.0,
        breaker: UpstreamBreaker | None = None,
        clock: Callable[[], float] = time.monotonic,
        token_margin: float = 10.0,
        max_redirects: int = 5,
        user_agent: str = "portway",
    ) -> None:
        parts = urlsplit(remote_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"remote_url {remote_url!r} is not an http(s) URL")
        host = parts.hostname.lower()
        self.docker_hub = host in DOCKER_HUB_HOSTS
        if self.docker_hub and host != "registry-1.docker.io":
            remote_url = DOCKER_HUB_REGISTRY  # docker.io itself serves no v2 API
        self.remote_url = remote_url.rstrip("/")
        self.read_timeout = read_timeout
        self.breaker = breaker
        self.max_redirects = max_redirects
        self._session = session
        self._user_agent = user_agent
        self._blob_timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )
        self._manifest_timeout = aiohttp.ClientTimeout(
            total=manifest_timeout, connect=connect_timeout, sock_read=read_timeout
        )
        self.auth = UpstreamAuth(
            session,
            username=username,
            password=password,
            timeout=self._manifest_timeout,
            clock=clock,
            token_margin=token_margin,
            user_agent=user_agent,
        )

    def __repr__(self) -> str:
        return f"UpstreamRegistry({self.remote_url!r})"

    @property
    def session(self) -> aiohttp.ClientSession:
        """The HTTP session this client uses (for plain downloads such as foreign layers)."""
        return self._session

    # -- names -------------------------------------------------------------------------------

    def remote_name(self, image: str) -> str:
        """The name to ask the upstream for: ``alpine`` is ``library/alpine`` on Docker Hub."""
        if not NAME_RE.match(image):
            raise ValueError(f"{image!r} is not a valid image name")
        if self.docker_hub and "/" not in image:
            return f"library/{image}"
        return image

    def _reference(self, reference: str) -> str:
        if not (TAG_RE.match(reference) or is_digest(reference)):
            raise ValueError(f"{reference!r} is neither a tag nor a digest")
        return reference

    def state(self) -> BreakerState | None:
        return self.breaker.state() if self.breaker is not None else None

    # -- API ---------------------------------------------------------------------------------

    async def ping(self) -> PingResult:
        """``GET /v2/``, logging in as ``docker login`` would (a token with no scope)."""
        url = f"{self.remote_url}/v2/"
        async with self._request("GET", url, scope=None, what="the v2 API root") as resp:
            return PingResult(
                api_version=resp.headers.get("Docker-Distribution-API-Version"),
                auth_scheme=self.auth.scheme,
            )

    def _manifest_target(self, image: str, reference: str) -> tuple[str, str, str, str]:
        """(remote name, reference, URL, how errors name it) of a manifest."""
        name, ref = self.remote_name(image), self._reference(reference)
        what = f"manifest {name}{'@' if is_digest(ref) else ':'}{ref}"
        return name, ref, f"{self.remote_url}/v2/{name}/manifests/{ref}", what

    async def get_manifest(
        self, image: str, reference: str, accept: Sequence[str]
    ) -> UpstreamManifest:
        name, ref, url, what = self._manifest_target(image, reference)
        async with self._request("GET", url, scope=_pull(name), accept=accept, what=what) as resp:
            if resp.content_length is not None and resp.content_length > MAX_MANIFEST_SIZE:
                raise self._failed(
                    UpstreamServerError(url, f"{what} is larger than {MAX_MANIFEST_SIZE} bytes")
                )
            try:
                body = await resp.content.read(MAX_MANIFEST_SIZE + 1)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise self._failed(
                    from_client_exception(url, exc, timeout=self.read_timeout)
                ) from exc
            if len(body) > MAX_MANIFEST_SIZE:
                raise self._failed(
                    UpstreamServerError(url, f"{what} is larger than {MAX_MANIFEST_SIZE} bytes")
                )
            if resp.content_length is not None and len(body) != resp.content_length:
                raise self._failed(
                    UpstreamTruncatedError(
                        url, f"{what} ended after {len(body)} of {resp.content_length} bytes"
                    )
                )
            header_digest = resp.headers.get("Docker-Content-Digest")
            content_type = resp.headers.get("Content-Type", "")
        digest = verified_digest(url, what, body, ref, header_digest)
        return UpstreamManifest(
            body=body, media_type=media_type_of(content_type, body), digest=digest
        )

    async def head_manifest(
        self, image: str, reference: str, accept: Sequence[str]
    ) -> UpstreamManifestInfo:
        name, ref, url, what = self._manifest_target(image, reference)
        async with self._request("HEAD", url, scope=_pull(name), accept=accept, what=what) as resp:
            digest = resp.headers.get("Docker-Content-Digest")
            if digest is not None and not is_digest(digest):
                digest = None
            if digest is None and is_digest(ref):
                digest = ref
            content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            return UpstreamManifestInfo(
                digest=digest,
                media_type=content_type if content_type not in GENERIC_TYPES else None,
                size=resp.content_length,
            )

    @asynccontextmanager
    async def open_blob(
        self, image: str, digest: str, *, verify: bool = True
    ) -> AsyncIterator[UpstreamBlob]:
        """Open a blob for streaming: ``async with upstream.open_blob(i, d) as blob``.

        Redirects to storage (S3, CDN) are followed without our ``Authorization`` header
        when they leave the registry's origin. Leaving the block early closes the response.
        """
        name = self.remote_name(image)
        if not is_digest(digest):
            raise ValueError(f"{digest!r} is not a digest this registry can verify")
        url = f"{self.remote_url}/v2/{name}/blobs/{digest}"
        what = f"blob {digest} of {name}"
        async with self._request(
            "GET", url, scope=_pull(name), what=what, timeout=self._blob_timeout
        ) as resp:
            yield UpstreamBlob(resp, digest, verify, what, self.read_timeout, self._failed)

    async def head_blob(self, image: str, digest: str) -> int | None:
        """``HEAD`` a blob: its length (None when the upstream sent none), without its bytes."""
        name = self.remote_name(image)
        if not is_digest(digest):
            raise ValueError(f"{digest!r} is not a digest this registry can verify")
        url = f"{self.remote_url}/v2/{name}/blobs/{digest}"
        async with self._request(
            "HEAD", url, scope=_pull(name), what=f"blob {digest} of {name}"
        ) as resp:
            return resp.content_length

    async def list_tags(self, image: str, n: int | None = None, last: str | None = None) -> TagPage:
        name = self.remote_name(image)
        params: dict[str, str] = {}
        if n is not None:
            params["n"] = str(n)
        if last is not None:
            params["last"] = last
        url = f"{self.remote_url}/v2/{name}/tags/list"
        async with self._request(
            "GET", url, scope=_pull(name), params=params, what=f"tags of {name}"
        ) as resp:
            doc = await self._read_json(resp, url)
            link = resp.headers.get("Link")
        tags = doc.get("tags") if isinstance(doc, dict) else None
        if tags is not None and not (
            isinstance(tags, list) and all(isinstance(t, str) for t in tags)
        ):
            raise self._failed(UpstreamServerError(url, "answered a malformed tag list"))
        return TagPage(name=name, tags=list(tags or []), next_last=next_last_from_link(link))

    async def search(self, q: str, n: int = 25, page: int = 1) -> SearchPage | None:
        """Docker's ``/v1/search``; None when the upstream offers none (distribution)."""
        base = DOCKER_HUB_INDEX if self.docker_hub else self.remote_url
        url = f"{base}/v1/search"
        params = {"q": q, "n": str(n), "page": str(page)}
        try:
            async with self._request("GET", url, scope=None, params=params, what="search") as resp:
                doc = await self._read_json(resp, url)
        except UpstreamNotFoundError:
            return None
        except UpstreamError as exc:
            if exc.status in (400, 405, 501):
                return None
            raise
        if not isinstance(doc, dict) or not isinstance(doc.get("results", []), list):
            raise self._failed(UpstreamServerError(url, "answered a malformed search result"))
        results = [r for r in doc.get("results") or [] if isinstance(r, dict)]
        return SearchPage(
            query=str(doc.get("query", q)),
            num_results=int_or(doc.get("num_results"), len(results)),
            num_pages=int_or(doc.get("num_pages"), 1),
            page=int_or(doc.get("page"), page),
            page_size=int_or(doc.get("page_size"), n),
            results=results,
        )

    # -- plumbing ----------------------------------------------------------------------------

    def _failed(self, error: UpstreamError) -> UpstreamError:
        if self.breaker is not None:
            self.breaker.record_failure(error)
        return error

    async def _read_json(self, resp: aiohttp.ClientResponse, url: str) -> Any:
        try:
            body = await resp.content.read(MAX_MANIFEST_SIZE)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._failed(from_client_exception(url, exc, timeout=self.read_timeout)) from exc
        try:
            return json.loads(body)
        except ValueError:
            error = UpstreamServerError(url, "answered something that is not JSON")
            raise self._failed(error) from None

    @asynccontextmanager
    async def _request(
        self,
        method: str,
        url: str,
        *,
        scope: str | None,
        what: str,
        accept: Sequence[str] = (),
        params: Mapping[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One logical request: breaker check, auth dance, redirects, status → error."""
        if self.breaker is not None:
            self.breaker.check()
        headers: CIMultiDict[str] = CIMultiDict({"User-Agent": self._user_agent})
        if accept:
            headers["Accept"] = ", ".join(accept)
        try:
            resp = await self._send(method, url, headers, scope, params, timeout, what)
        except UpstreamError as exc:
            raise self._failed(exc) from None
        try:
            if resp.status >= 400:
                raise self._failed(await error_of(resp, method, what, self.auth))
            if self.breaker is not None:
                self.breaker.record_success()
            yield resp
        finally:
            resp.release()

    async def _send(
        self,
        method: str,
        url: str,
        headers: CIMultiDict[str],
        scope: str | None,
        params: Mapping[str, str] | None,
        timeout: aiohttp.ClientTimeout | None,
        what: str,
    ) -> aiohttp.ClientResponse:
        timeout = timeout or self._manifest_timeout
        authorization = await self.auth.authorization(scope)
        resp = await self._raw(method, url, headers, authorization, params, timeout)
        if resp.status == 401:
            challenges = parse_challenges(resp.headers.getall("WWW-Authenticate", []))
            resp.release()
            retry_with = await self.auth.answer(url, challenges, scope, authorization)
            resp = await self._raw(method, url, headers, retry_with, params, timeout)
            authorization = retry_with
            if resp.status == 401:
                resp.release()
                if retry_with.startswith("Bearer "):
                    raise self.auth.token_refused(url, scope)
                raise self.auth.refused(url)
        origin = _origin(url)
        for _ in range(self.max_redirects):
            location = resp.headers.get("Location")
            if resp.status not in _REDIRECTS or not location:
                return resp
            resp.release()
            url = urljoin(str(resp.url), location)
            params = None  # the Location carries its own query
            if _origin(url) != origin:
                authorization = None  # never hand our credentials to another host
                headers = CIMultiDict((k, v) for k, v in headers.items() if k != "Accept")
            resp = await self._raw(method, url, headers, authorization, params, timeout)
        resp.release()
        raise UpstreamServerError(url, f"{what}: more than {self.max_redirects} redirects")

    async def _raw(
        self,
        method: str,
        url: str,
        headers: CIMultiDict[str],
        authorization: str | None,
        params: Mapping[str, str] | None,
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        sent = CIMultiDict(headers)
        if authorization is not None:
            sent["Authorization"] = authorization
        try:
            return await self._session.request(
                method, url, headers=sent, params=params, timeout=timeout, allow_redirects=False
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise from_client_exception(
                url, exc, timeout=timeout.total or timeout.sock_read
            ) from exc


def _pull(name: str) -> str:
    return f"repository:{name}:pull"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port
