"""Client for a remote v2 registry, as a proxy repository uses it.

One ``UpstreamRegistry`` per proxy repository, sharing the application's
``aiohttp.ClientSession``. Every method either returns what was asked for or raises an
``UpstreamError`` whose ``kind`` says what went wrong; with a breaker attached, failures are
counted and a blocked upstream is not contacted at all.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict

from .auth import UpstreamAuth
from .breaker import BreakerState, UpstreamBreaker
from .challenge import parse_challenges
from .errors import (
    UpstreamDigestMismatchError,
    UpstreamError,
    UpstreamNotFoundError,
    UpstreamRateLimitedError,
    UpstreamServerError,
    UpstreamTimeoutError,
    UpstreamTruncatedError,
    UpstreamUnauthorizedError,
    from_client_exception,
    parse_retry_after,
)

DOCKER_HUB_HOSTS = frozenset({"registry-1.docker.io", "docker.io", "index.docker.io"})
DOCKER_HUB_REGISTRY = "https://registry-1.docker.io"
DOCKER_HUB_INDEX = "https://index.docker.io"  # where Docker Hub answers /v1/search

MAX_MANIFEST_SIZE = 4 * 1024 * 1024  # distribution's own limit
MAX_ERROR_BODY = 64 * 1024
BLOB_CHUNK_SIZE = 64 * 1024

_NAME = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
_NOT_FOUND_CODES = {"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN", "NOT_FOUND"}
_GENERIC_TYPES = {"", "application/json", "text/plain", "application/octet-stream"}
_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class UpstreamManifest:
    body: bytes
    media_type: str
    digest: str

    @property
    def size(self) -> int:
        return len(self.body)


@dataclass(frozen=True)
class UpstreamManifestInfo:
    """What a HEAD tells: enough to see whether a cached tag is still current."""

    digest: str | None  # None when the upstream sent no Docker-Content-Digest
    media_type: str | None
    size: int | None


@dataclass(frozen=True)
class TagPage:
    name: str
    tags: list[str]
    next_last: str | None  # pass as ``last`` for the next page; None on the last page


@dataclass(frozen=True)
class SearchPage:
    query: str
    num_results: int
    num_pages: int
    page: int
    page_size: int
    results: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class PingResult:
    api_version: str | None  # Docker-Distribution-API-Version, e.g. "registry/2.0"
    auth_scheme: str | None  # "basic", "bearer" or None (anonymous)


def is_digest(reference: str) -> bool:
    return _DIGEST.match(reference) is not None


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    hasher = _hasher(algorithm)()
    hasher.update(data)
    return f"{algorithm}:{hasher.hexdigest()}"


def _hasher(algorithm: str) -> Callable[[], hashlib._Hash]:
    try:
        return _HASHES[algorithm]
    except KeyError:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}") from None


class UpstreamBlob:
    """An open blob response. Iterate it for bytes; with ``verify`` the iteration raises
    ``UpstreamDigestMismatchError`` at the end if the bytes do not hash to the digest, and
    ``UpstreamTruncatedError`` when fewer bytes than announced arrived."""

    def __init__(
        self,
        registry: UpstreamRegistry,
        response: aiohttp.ClientResponse,
        digest: str,
        verify: bool,
        what: str,
    ) -> None:
        self._registry = registry
        self._response = response
        self.digest = digest
        self.verify = verify
        self.size: int | None = response.content_length
        self.media_type: str | None = response.headers.get("Content-Type")
        self.url = str(response.url)
        self._what = what

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.iter_chunks()

    async def iter_chunks(self, chunk_size: int = BLOB_CHUNK_SIZE) -> AsyncIterator[bytes]:
        algorithm = self.digest.split(":", 1)[0]
        hasher = _hasher(algorithm)() if self.verify else None
        received = 0
        try:
            async for chunk in self._response.content.iter_chunked(chunk_size):
                received += len(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                yield chunk
        except TimeoutError as exc:
            stalled = UpstreamTimeoutError(
                self.url,
                f"{self._what} stalled: no data for {self._registry.read_timeout:g} s"
                f" after {received} bytes",
            )
            raise self._registry._failed(stalled) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self._registry._failed(
                from_client_exception(self.url, exc, timeout=self._registry.read_timeout)
            ) from exc
        if self.size is not None and received != self.size:
            raise self._registry._failed(
                UpstreamTruncatedError(
                    self.url, f"{self._what} ended after {received} of {self.size} bytes"
                )
            )
        if hasher is not None and f"{algorithm}:{hasher.hexdigest()}" != self.digest:
            raise UpstreamDigestMismatchError(
                self.url,
                f"{self._what} arrived with digest {algorithm}:{hasher.hexdigest()}"
                f" ({received} bytes), not the one requested; discarded",
            )

    async def read(self) -> bytes:
        """The whole blob in memory: for tests and small blobs (config) only."""
        return b"".join([chunk async for chunk in self])


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

    # -- names -------------------------------------------------------------------------------

    def remote_name(self, image: str) -> str:
        """The name to ask the upstream for: ``alpine`` is ``library/alpine`` on Docker Hub."""
        if not _NAME.match(image):
            raise ValueError(f"{image!r} is not a valid image name")
        if self.docker_hub and "/" not in image:
            return f"library/{image}"
        return image

    def _reference(self, reference: str) -> str:
        if not (_TAG.match(reference) or is_digest(reference)):
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

    async def get_manifest(
        self, image: str, reference: str, accept: Sequence[str]
    ) -> UpstreamManifest:
        name, ref = self.remote_name(image), self._reference(reference)
        url = f"{self.remote_url}/v2/{name}/manifests/{ref}"
        what = f"manifest {name}{'@' if is_digest(ref) else ':'}{ref}"
        async with self._request("GET", url, scope=_pull(name), accept=accept, what=what) as resp:
            if resp.content_length is not None and resp.content_length > MAX_MANIFEST_SIZE:
                raise self._failed(
                    UpstreamServerError(url, f"{what} is larger than {MAX_MANIFEST_SIZE} bytes")
                )
            try:
                body = await resp.content.read(MAX_MANIFEST_SIZE + 1)
                if len(body) > MAX_MANIFEST_SIZE:
                    raise UpstreamServerError(
                        url, f"{what} is larger than {MAX_MANIFEST_SIZE} bytes"
                    )
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise self._failed(
                    from_client_exception(url, exc, timeout=self.read_timeout)
                ) from exc
            if resp.content_length is not None and len(body) != resp.content_length:
                raise self._failed(
                    UpstreamTruncatedError(
                        url, f"{what} ended after {len(body)} of {resp.content_length} bytes"
                    )
                )
            header_digest = resp.headers.get("Docker-Content-Digest")
            content_type = resp.headers.get("Content-Type", "")
        digest = _verified_digest(url, what, body, ref, header_digest)
        return UpstreamManifest(
            body=body, media_type=_media_type(content_type, body), digest=digest
        )

    async def head_manifest(
        self, image: str, reference: str, accept: Sequence[str]
    ) -> UpstreamManifestInfo:
        name, ref = self.remote_name(image), self._reference(reference)
        url = f"{self.remote_url}/v2/{name}/manifests/{ref}"
        what = f"manifest {name}{'@' if is_digest(ref) else ':'}{ref}"
        async with self._request("HEAD", url, scope=_pull(name), accept=accept, what=what) as resp:
            digest = resp.headers.get("Docker-Content-Digest")
            if digest is not None and not is_digest(digest):
                digest = None
            if digest is None and is_digest(ref):
                digest = ref
            content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            return UpstreamManifestInfo(
                digest=digest,
                media_type=content_type if content_type not in _GENERIC_TYPES else None,
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
            raise ValueError(f"{digest!r} is not a digest")
        _hasher(digest.split(":", 1)[0])
        url = f"{self.remote_url}/v2/{name}/blobs/{digest}"
        what = f"blob {digest} of {name}"
        async with self._request(
            "GET", url, scope=_pull(name), what=what, timeout=self._blob_timeout
        ) as resp:
            yield UpstreamBlob(self, resp, digest, verify, what)

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
        return TagPage(name=name, tags=list(tags or []), next_last=_next_last(link))

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
            num_results=_int(doc.get("num_results"), len(results)),
            num_pages=_int(doc.get("num_pages"), 1),
            page=_int(doc.get("page"), page),
            page_size=_int(doc.get("page_size"), n),
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
                raise self._failed(await self._error(resp, method, what))
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

    async def _error(self, resp: aiohttp.ClientResponse, method: str, what: str) -> UpstreamError:
        url = str(resp.url)
        status = resp.status
        codes: list[str] = []
        message = ""
        if method != "HEAD":
            try:
                body = await resp.content.read(MAX_ERROR_BODY)
                doc = json.loads(body)
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
                doc = None
            if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
                for item in doc["errors"]:
                    if isinstance(item, dict):
                        codes.append(str(item.get("code", "")))
                        message = message or str(item.get("message", ""))
        detail = f" ({', '.join(c for c in codes if c)})" if any(codes) else ""
        said = f": {message}" if message else ""
        if status == 404 or _NOT_FOUND_CODES.intersection(codes):
            code = next((c for c in codes if c in _NOT_FOUND_CODES), None)
            return UpstreamNotFoundError(url, f"{what} not found{detail}", status=status, code=code)
        if status == 429:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            wait = f"; it asks to retry after {retry_after:g} s" if retry_after is not None else ""
            return UpstreamRateLimitedError(
                url,
                f"rate limit reached (429) asking for {what}{wait}",
                retry_after=retry_after,
            )
        if status in (401, 403):
            if status == 403 and not self.auth.has_credentials:
                return self.auth.refused(url, status)
            if status == 403:
                return UpstreamUnauthorizedError(
                    url, f"denied access to {what} (403){detail}{said}", status=status
                )
            return self.auth.refused(url, status)
        if status >= 500:
            return UpstreamServerError(
                url, f"failed with {status} {resp.reason} asking for {what}{said}", status=status
            )
        return UpstreamServerError(
            url, f"answered {status} {resp.reason} asking for {what}{detail}{said}", status=status
        )


def _pull(name: str) -> str:
    return f"repository:{name}:pull"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _verified_digest(
    url: str, what: str, body: bytes, reference: str, header_digest: str | None
) -> str:
    """The manifest's digest; raises when the body does not match what was asked or told."""
    expected = [d for d in (reference if is_digest(reference) else None, header_digest) if d]
    algorithm = expected[0].split(":", 1)[0] if expected else "sha256"
    if algorithm not in _HASHES:
        algorithm = "sha256"
    actual = compute_digest(body, algorithm)
    for claimed in expected:
        if claimed.split(":", 1)[0] != algorithm:
            continue  # a header in another algorithm than the reference: nothing to compare
        if claimed != actual:
            source = "requested" if claimed == reference else "announced by Docker-Content-Digest"
            raise UpstreamDigestMismatchError(
                url, f"{what} arrived with digest {actual}, not the {claimed} {source}; discarded"
            )
    return actual


def _media_type(content_type: str, body: bytes) -> str:
    media_type = content_type.split(";")[0].strip()
    if media_type not in _GENERIC_TYPES:
        return media_type
    try:
        doc = json.loads(body)
    except ValueError:
        return media_type or "application/octet-stream"
    if isinstance(doc, dict):
        declared = doc.get("mediaType")
        if isinstance(declared, str) and declared:
            return declared
        if doc.get("schemaVersion") == 1:
            return "application/vnd.docker.distribution.manifest.v1+prettyjws"
    return media_type or "application/json"


def _next_last(link: str | None) -> str | None:
    if not link:
        return None
    for part in link.split(","):
        target, _, rest = part.partition(";")
        if 'rel="next"' not in rest.replace(" ", "") and "rel=next" not in rest.replace(" ", ""):
            continue
        query = urlsplit(target.strip().strip("<>")).query
        values = parse_qs(query).get("last")
        if values:
            return values[0]
    return None


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
