"""What the upstream sends back: manifests, blobs, tag pages, search pages, and the
checks that keep a corrupted body out of the cache."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

from portway.oci.digest import Digest
from portway.oci.errors import RegistryError

from .errors import (
    UpstreamDigestMismatchError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamTruncatedError,
    from_client_exception,
)

BLOB_CHUNK_SIZE = 1024 * 1024  # iter_chunked yields what has arrived, up to this
GENERIC_TYPES = {"", "application/json", "text/plain", "application/octet-stream"}


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


def valid_digest(text: str) -> Digest | None:
    """The digest `text` names, when it is one this registry can verify."""
    try:
        return Digest.parse(text)
    except RegistryError:
        return None


def is_digest(reference: str) -> bool:
    return valid_digest(reference) is not None


class UpstreamBlob:
    """An open blob response. Iterate it for bytes; with ``verify`` the iteration raises
    ``UpstreamDigestMismatchError`` at the end if the bytes do not hash to the digest, and
    ``UpstreamTruncatedError`` when fewer bytes than announced arrived."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        digest: str,
        verify: bool,
        what: str,
        read_timeout: float,
        on_failure: Callable[[UpstreamError], UpstreamError],
    ) -> None:
        self._read_timeout = read_timeout
        self._failed = on_failure
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
        hasher = Digest.parse(self.digest).hasher() if self.verify else None
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
                f"{self._what} stalled: no data for {self._read_timeout:g} s"
                f" after {received} bytes",
            )
            raise self._failed(stalled) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self._failed(
                from_client_exception(self.url, exc, timeout=self._read_timeout)
            ) from exc
        if self.size is not None and received != self.size:
            raise self._failed(
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


def verified_digest(
    url: str, what: str, body: bytes, reference: str, header_digest: str | None
) -> str:
    """The manifest's digest; raises when the body does not match what was asked or told."""
    expected = [d for d in (reference if is_digest(reference) else None, header_digest) if d]
    first = valid_digest(expected[0]) if expected else None
    algorithm = first.algorithm if first is not None else "sha256"
    actual = str(Digest.of(body, algorithm))
    for claimed in expected:
        if claimed.split(":", 1)[0] != algorithm:
            continue  # a header in another algorithm than the reference: nothing to compare
        if claimed != actual:
            source = "requested" if claimed == reference else "announced by Docker-Content-Digest"
            raise UpstreamDigestMismatchError(
                url, f"{what} arrived with digest {actual}, not the {claimed} {source}; discarded"
            )
    return actual


def media_type_of(content_type: str, body: bytes) -> str:
    media_type = content_type.split(";")[0].strip()
    if media_type not in GENERIC_TYPES:
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


def next_last_from_link(link: str | None) -> str | None:
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


def int_or(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
