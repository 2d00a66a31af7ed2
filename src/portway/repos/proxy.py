"""Proxy repository: a pull-through cache of a remote v2 registry.

A decorator over a local cache with the same tables as a hosted repository: manifests by
digest and blobs are immutable and kept; a tag is re-checked upstream after
`metadata_max_age`; an upstream 404 is remembered for `negative_cache_ttl`. Blobs stream to
the first client as they arrive while the same bytes fill the cache, which commits only after
the digest verifies. Concurrent cold pulls of one blob or manifest share one upstream request.
When the upstream is down or rate-limited, cached content (stale tags included) is served.
The blob half lives in `proxy_blobs`, what clients are told of upstream failures in
`proxy_errors`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiohttp

from portway.config import RepositoryConfig
from portway.coordination.interfaces import Locks
from portway.coordination.negative import NegativeCache
from portway.db.store import MetadataStore, NewManifest
from portway.lifecycle.guard import Guard
from portway.observe.metrics import proxy_events
from portway.oci import mediatypes as mt
from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from portway.oci.manifest import parse_manifest
from portway.oci.names import lookup_reference
from portway.repos.base import Manifest
from portway.repos.proxy_blobs import ProxyBlobs
from portway.repos.proxy_errors import (
    manifest_unavailable,
    unusable_manifest,
    upstream_unavailable,
)
from portway.storage.blobstore import BlobStore
from portway.upstream.breaker import BreakerState, UpstreamBreaker
from portway.upstream.client import UpstreamRegistry
from portway.upstream.errors import UpstreamError
from portway.upstream.heads import SharedHeads
from portway.upstream.singleflight import SharedDownloads, SingleFlight

if TYPE_CHECKING:
    from portway.repos.hosted import HostedRepository

log = logging.getLogger("portway.proxy")

UPSTREAM_ACCEPT = (mt.OCI_INDEX, mt.DOCKER_LIST, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST)


class ProxyRepository(ProxyBlobs):
    kind = "proxy"

    def __init__(
        self,
        config: RepositoryConfig,
        repo_id: int,
        meta: MetadataStore,
        blobs: BlobStore,
        locks: Locks | None = None,
        guard: Guard | None = None,
    ) -> None:
        assert config.remote_url is not None
        self.name = config.name
        self.config = config
        self.repo_id = repo_id
        self.meta = meta
        self.blobs = blobs
        self.guard = guard or Guard(meta)  # garbage collection's view of this repository
        self.breaker = UpstreamBreaker(config.remote_url)
        self._session: aiohttp.ClientSession | None = None
        self._upstream: UpstreamRegistry | None = None
        self._manifest_flights: SingleFlight[tuple[str, str], Manifest] = SingleFlight()
        self._downloads: SharedDownloads[str] | None = None
        self._heads: SharedHeads | None = None
        self._locks = locks
        self.negative = NegativeCache()

    # -- plumbing ----------------------------------------------------------------------
    @property
    def upstream(self) -> UpstreamRegistry:
        """Created on first use, inside the running event loop."""
        if self._upstream is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
            self._upstream = UpstreamRegistry(
                self.config.remote_url or "",
                self._session,
                username=self.config.remote_username,
                password=self.config.remote_password,
                breaker=self.breaker,
            )
        return self._upstream

    def breaker_state(self) -> BreakerState:
        return self.breaker.state()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def writable(self) -> HostedRepository:
        raise RegistryError(
            "DENIED",
            f"repository {self.name!r} is a proxy (read-only cache of "
            f"{self.config.remote_url}); push to a hosted repository or a group with a "
            "writable member",
        )

    def _negative_hit(self, image: str, reference: str) -> bool:
        return self.negative.hit(image, reference)

    def _remember_missing(self, image: str, reference: str) -> None:
        self.negative.remember(image, reference, self.config.negative_cache_ttl)

    # -- manifests ---------------------------------------------------------------------
    async def _fresh(self, image: str, tag: str, past_cache: bool = False) -> bool:
        info = await self.meta.tag_info(self.repo_id, image, tag, past_cache)
        if info is None:
            return False
        max_age = self.config.metadata_max_age
        return max_age < 0 or time.time() - info[1] < max_age

    async def get_manifest(self, image: str, reference: str, accept: Sequence[str]) -> Manifest:
        reference = lookup_reference(reference)
        by_digest = Digest.is_digest(reference)
        cached = await self.meta.manifest(self.repo_id, image, reference)
        if cached is not None and (by_digest or await self._fresh(image, reference)):
            self.guard.pulled(self.repo_id, image, cached.digest)  # the cache's last use
            proxy_events.hit(self.name, "manifest")
            return cached
        if self._negative_hit(image, reference) and cached is None:
            proxy_events.hit(self.name, "manifest")
            raise RegistryError(
                "MANIFEST_UNKNOWN", f"{image}:{reference} not found upstream (cached answer)"
            )
        proxy_events.miss(self.name, "manifest")
        try:
            return await self._manifest_flights.do(
                (image, reference), lambda: self._fetch_manifest_once(image, reference, cached)
            )
        except UpstreamError as err:
            proxy_events.error(self.name, err.kind)
            if err.kind == "not_found":
                self._remember_missing(image, reference)
                raise RegistryError(
                    "MANIFEST_UNKNOWN",
                    f"manifest {image}:{reference} not found in {self.config.remote_url}",
                ) from None
            if cached is not None:
                log.warning(
                    "proxy %s: serving cached %s:%s, upstream unavailable: %s",
                    self.name,
                    image,
                    reference,
                    err,
                )
                return cached
            log.warning(
                "proxy %s: %s:%s not cached, upstream: %s", self.name, image, reference, err
            )
            raise manifest_unavailable(err, self.name, self.remote) from None

    async def _fetch_manifest_once(
        self, image: str, reference: str, cached: Manifest | None
    ) -> Manifest:
        """One worker process at a time asks the upstream for a manifest; a worker that waited
        finds what the other one stored, read past the read cache (a node that stored it
        signals other nodes within a second, and this one may not have heard yet)."""
        lock = self.locks().lock(self._lock_name("m", image, reference))
        await lock.acquire()
        try:
            stored = await self.meta.manifest(self.repo_id, image, reference, fresh=True)
            if stored is not None and (
                Digest.is_digest(reference) or await self._fresh(image, reference, True)
            ):
                return stored
            return await self._fetch_manifest(image, reference, stored or cached)
        finally:
            await lock.release()

    async def _fetch_manifest(
        self, image: str, reference: str, cached: Manifest | None
    ) -> Manifest:
        upstream = self.upstream
        if cached is not None:
            # A stale tag: a HEAD tells whether it moved without downloading it again.
            info = await upstream.head_manifest(image, reference, UPSTREAM_ACCEPT)
            if info.digest == cached.digest:
                await self.meta.touch_tag(self.repo_id, image, reference)
                return cached
        got = await upstream.get_manifest(image, reference, UPSTREAM_ACCEPT)
        try:
            parsed = parse_manifest(got.body, got.media_type)
        except RegistryError as exc:
            raise unusable_manifest(exc.message, self.name, self.remote) from None
        refs = [(str(d.digest), False) for d in parsed.blobs] + [
            (str(d.digest), True) for d in parsed.children
        ]
        tag_names = [] if Digest.is_digest(reference) else [reference]
        await self.meta.put_manifest(
            self.repo_id,
            image,
            NewManifest(
                digest=got.digest,
                media_type=parsed.media_type,
                body=got.body,
                artifact_type=parsed.artifact_type,
                subject=str(parsed.subject.digest) if parsed.subject else None,
                annotations=parsed.annotations,
                refs=refs,
            ),
            tag_names,
            lambda _tag, _current: None,
        )
        self.negative.forget(image, reference)
        return Manifest(got.digest, parsed.media_type, got.body)

    # -- listings ----------------------------------------------------------------------
    async def list_tags(self, image: str, last: str | None, n: int | None) -> list[str]:
        try:
            page = await self.upstream.list_tags(image)
            names = sorted(page.tags)
        except UpstreamError as err:
            proxy_events.error(self.name, err.kind)
            if err.kind == "not_found":
                raise RegistryError("NAME_UNKNOWN", f"image {image!r} not found upstream") from None
            names = await self.meta.list_tags(self.repo_id, image, None, None)
            if not names:
                raise upstream_unavailable(err, self.name, self.remote) from None
        if last is not None:
            names = [t for t in names if t > last]
        return names if n is None else names[:n]

    async def catalog(self, last: str | None, n: int | None) -> list[str]:
        return await self.meta.list_images(self.repo_id, last, n)

    async def referrers(
        self, image: str, digest: Digest, artifact_type: str | None
    ) -> list[dict[str, Any]]:
        from portway.repos.hosted import referrer_entries

        return await referrer_entries(self.meta, self.repo_id, image, digest, artifact_type)

    async def search(self, query: str, n: int, page: int) -> dict[str, Any] | None:
        try:
            found = await self.upstream.search(query, n, page)
        except UpstreamError as err:
            proxy_events.error(self.name, err.kind)
            raise upstream_unavailable(err, self.name, self.remote) from None
        if found is None:
            return None
        return {
            "query": found.query,
            "num_results": found.num_results,
            "num_pages": found.num_pages,
            "page": found.page,
            "page_size": found.page_size,
            "results": found.results,
        }
