"""Proxy repository: a pull-through cache of a remote v2 registry.

A decorator over a local cache with the same tables as a hosted repository: manifests by
digest and blobs are immutable and kept; a tag is re-checked upstream after
`metadata_max_age`; an upstream 404 is remembered for `negative_cache_ttl`. Blobs stream to
the first client as they arrive while the same bytes fill the cache, which commits only after
the digest verifies. Concurrent cold pulls of one blob or manifest share one upstream request.
When the upstream is down or rate-limited, cached content (stale tags included) is served.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp

from portway.config import RepositoryConfig
from portway.db.store import MetadataStore, NewManifest
from portway.oci import mediatypes as mt
from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from portway.oci.manifest import parse_manifest
from portway.oci.names import lookup_reference
from portway.repos.base import BlobBody, Manifest
from portway.storage.blobstore import BlobStore
from portway.upstream.breaker import BreakerState, UpstreamBreaker
from portway.upstream.client import UpstreamRegistry
from portway.upstream.crossworker import POLL_MAX, POLL_MIN, SpoolNotice, WorkerLock
from portway.upstream.errors import (
    UpstreamDigestMismatchError,
    UpstreamError,
    UpstreamNotFoundError,
    UpstreamUnreachableError,
)
from portway.upstream.singleflight import SharedDownloads, SingleFlight, Spool, SpoolReader

if TYPE_CHECKING:
    from portway.repos.hosted import HostedRepository

log = logging.getLogger("portway.proxy")

UPSTREAM_ACCEPT = (mt.OCI_INDEX, mt.DOCKER_LIST, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST)


def upstream_unavailable(err: UpstreamError, repository: str) -> RegistryError:
    if err.kind == "not_found":
        return RegistryError("MANIFEST_UNKNOWN", f"not found upstream: {err.problem}")
    if err.kind == "unauthorized":
        return RegistryError(
            "UPSTREAM_UNAVAILABLE",
            f"proxy repository {repository!r}: the upstream refused our credentials ({err})",
            status=502,
        )
    status = 429 if err.kind == "rate_limited" else 502 if err.kind != "timeout" else 504
    code = "TOOMANYREQUESTS" if err.kind == "rate_limited" else "UPSTREAM_UNAVAILABLE"
    return RegistryError(
        code,
        f"proxy repository {repository!r}: upstream problem ({err.kind}): {err}",
        status=status,
    )


class ProxyRepository:
    kind = "proxy"

    def __init__(
        self, config: RepositoryConfig, repo_id: int, meta: MetadataStore, blobs: BlobStore
    ) -> None:
        assert config.remote_url is not None
        self.name = config.name
        self.config = config
        self.repo_id = repo_id
        self.meta = meta
        self.blobs = blobs
        self.breaker = UpstreamBreaker(config.remote_url)
        self._session: aiohttp.ClientSession | None = None
        self._upstream: UpstreamRegistry | None = None
        self._manifest_flights: SingleFlight[tuple[str, str], Manifest] = SingleFlight()
        self._downloads: SharedDownloads[str] | None = None
        self._negative: dict[tuple[str, str], float] = {}

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

    def downloads(self) -> SharedDownloads[str]:
        if self._downloads is None:
            self._downloads = SharedDownloads(self.blobs.spool_dir())
        return self._downloads

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
        expires = self._negative.get((image, reference))
        if expires is None:
            return False
        if expires < time.monotonic():
            del self._negative[(image, reference)]
            return False
        return True

    def _remember_missing(self, image: str, reference: str) -> None:
        if self.config.negative_cache_ttl > 0:
            if len(self._negative) > 10000:
                self._negative.clear()
            self._negative[(image, reference)] = time.monotonic() + self.config.negative_cache_ttl

    # -- manifests ---------------------------------------------------------------------
    def _fresh(self, image: str, tag: str) -> bool:
        info = self.meta.tag_info(self.repo_id, image, tag)
        if info is None:
            return False
        max_age = self.config.metadata_max_age
        return max_age < 0 or time.time() - info[1] < max_age

    async def get_manifest(self, image: str, reference: str, accept: Sequence[str]) -> Manifest:
        reference = lookup_reference(reference)
        by_digest = Digest.is_digest(reference)
        cached = self.meta.manifest(self.repo_id, image, reference)
        if cached is not None and (by_digest or self._fresh(image, reference)):
            return cached
        if self._negative_hit(image, reference) and cached is None:
            raise RegistryError(
                "MANIFEST_UNKNOWN", f"{image}:{reference} not found upstream (cached answer)"
            )
        try:
            return await self._manifest_flights.do(
                (image, reference), lambda: self._fetch_manifest_once(image, reference, cached)
            )
        except UpstreamError as err:
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
            raise upstream_unavailable(err, self.name) from None

    def _lock_name(self, kind: str, *parts: str) -> str:
        key = "\0".join((str(self.repo_id), *parts))
        return f"{kind}-{hashlib.sha256(key.encode()).hexdigest()}"

    async def _fetch_manifest_once(
        self, image: str, reference: str, cached: Manifest | None
    ) -> Manifest:
        """One worker process at a time asks the upstream for a manifest; a worker that waited
        finds what the other one stored."""
        lock = WorkerLock(self.blobs.lock_dir(), self._lock_name("m", image, reference))
        await lock.acquire()
        try:
            stored = self.meta.manifest(self.repo_id, image, reference)
            if stored is not None and (
                Digest.is_digest(reference) or self._fresh(image, reference)
            ):
                return stored
            return await self._fetch_manifest(image, reference, stored or cached)
        finally:
            lock.release()

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
            raise RegistryError(
                "UPSTREAM_UNAVAILABLE",
                f"proxy repository {self.name!r}: the upstream sent an unusable manifest "
                f"({exc.message})",
                status=502,
            ) from None
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
        self._negative.pop((image, reference), None)
        return Manifest(got.digest, parsed.media_type, got.body)

    # -- blobs -------------------------------------------------------------------------
    async def has_blob(self, image: str, digest: Digest) -> bool:
        return self.meta.blob_size(self.repo_id, image, str(digest)) is not None

    async def stat_blob(self, image: str, digest: Digest) -> int:
        size = self.meta.blob_size(self.repo_id, image, str(digest))
        if size is not None and await self.blobs.stat(digest) is not None:
            return size
        reader = await self._follow(image, digest)
        try:
            return await self._wait_size(reader, digest)
        finally:
            reader.close()

    async def open_blob(self, image: str, digest: Digest) -> BlobBody:
        size = self.meta.blob_size(self.repo_id, image, str(digest))
        path = self.blobs.local_path(digest)
        if size is not None and await self.blobs.stat(digest) is not None:
            if path is not None:
                return BlobBody(digest=digest, size=size, path=path)
            return BlobBody(digest=digest, size=size, stream=self.blobs.read(digest))
        reader = await self._follow(image, digest)
        try:
            total = await self._wait_size(reader, digest)
        except BaseException:
            reader.close()
            raise
        return BlobBody(digest=digest, size=total, growing=reader)

    async def _follow(self, image: str, digest: Digest) -> SpoolReader:
        # A blocked upstream needs no check here: the fill's first request raises
        # UpstreamBlockedError, which every reader gets.
        key = f"{image}@{digest}"

        async def fill(spool: Spool) -> None:
            name = self._lock_name("b", image, str(digest))
            lock = WorkerLock(self.blobs.lock_dir(), name)
            notice = SpoolNotice(self.blobs.lock_dir(), name)
            if not lock.try_acquire():
                await _mirror(lock, notice, spool)
            try:
                notice.withdraw()  # one left by a worker killed while it fetched
                if await self._linked(image, digest):
                    # Another worker fetched and cached it meanwhile: the rest comes from there.
                    await self._copy_stored(digest, spool)
                    return
                if spool.written:
                    raise UpstreamUnreachableError(
                        self.config.remote_url or "",
                        "the worker fetching this blob failed before it was cached",
                    )
                try:
                    await self._fill(image, digest, spool, notice)
                except UpstreamError as err:
                    url = self._foreign_url(image, digest) if err.kind == "not_found" else None
                    if url is None:
                        raise
                    await self._fill_foreign(url, image, digest, spool, notice)
            finally:
                notice.withdraw()
                lock.release()

        return self.downloads().follow(key, fill)

    async def _linked(self, image: str, digest: Digest) -> bool:
        return (
            self.meta.blob_size(self.repo_id, image, str(digest)) is not None
            and await self.blobs.stat(digest) is not None
        )

    async def _copy_stored(self, digest: Digest, spool: Spool) -> None:
        path = self.blobs.local_path(digest)
        assert path is not None  # proxy caches live on a local filesystem (spool + link)
        fd = os.open(path, os.O_RDONLY)
        try:
            if not spool.started:
                spool.set_size(os.fstat(fd).st_size)
            await _copy_growing(fd, spool)
        finally:
            os.close(fd)

    async def _wait_size(self, reader: SpoolReader, digest: Digest) -> int:
        try:
            size = await reader.wait_started()
        except UpstreamError as err:
            if err.kind == "not_found":
                raise RegistryError(
                    "BLOB_UNKNOWN", f"blob {digest} not found in {self.config.remote_url}"
                ) from None
            raise upstream_unavailable(err, self.name) from None
        if size is None:
            # The upstream sent no length: wait for the whole blob (it is cached then).
            async for _ in reader:
                pass
            size = reader.position
        return size

    async def _fill(self, image: str, digest: Digest, spool: Spool, notice: SpoolNotice) -> None:
        """Download once into the spool; publish into the cache only after the digest
        verified. Runs in its own task: a client hanging up does not stop it."""
        async with self.upstream.open_blob(image, str(digest), verify=False) as blob:
            spool.set_size(blob.size)
            notice.publish(spool.path, blob.size)
            await self._stream(blob, spool, digest, blob.url)
        await self._commit(spool, image, digest)

    async def _stream(
        self, chunks: AsyncIterable[bytes], spool: Spool, digest: Digest, source: str
    ) -> None:
        """Copy into the spool while a worker thread hashes the previous chunk. The last
        chunk is held back until the digest verified: no client receives the whole of a
        corrupted blob."""
        loop = asyncio.get_running_loop()
        hasher = digest.hasher()
        held: bytes | None = None
        hashing: asyncio.Future[None] | None = None
        async for chunk in chunks:
            if held is not None:
                await spool.write(held)
            if hashing is not None:
                await hashing
            hashing = loop.run_in_executor(None, hasher.update, chunk)
            held = chunk
        if hashing is not None:
            await hashing
        if hasher.hexdigest() != digest.hex:
            raise UpstreamDigestMismatchError(
                source,
                f"blob arrived with digest {digest.algorithm}:{hasher.hexdigest()}, not "
                f"{digest}; discarded",
            )
        if held is not None:
            await spool.write(held)

    async def _commit(self, spool: Spool, image: str, digest: Digest) -> None:
        # Verified: release the readers now; the cache commit (fsync, link, database) need
        # not hold up the clients' responses.
        spool.finish()
        await self.blobs.publish_file(spool.path, digest)
        await self.meta.link_blob(self.repo_id, image, str(digest), spool.written)

    # -- foreign (non-distributable) layers --------------------------------------------
    def _foreign_url(self, image: str, digest: Digest) -> str | None:
        """With `cache_foreign_layers`, the first URL of a cached manifest's layer `digest`
        that the allow-list (`foreign_layer_urls`, regular expressions) accepts."""
        if not self.config.cache_foreign_layers:
            return None
        for body in self.meta.manifest_bodies(self.repo_id, image):
            for url in foreign_urls(body, str(digest)):
                if any(re.fullmatch(p, url) for p in self.config.foreign_layer_urls):
                    return url
        return None

    async def _fill_foreign(
        self, url: str, image: str, digest: Digest, spool: Spool, notice: SpoolNotice
    ) -> None:
        session = self.upstream.session
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)
        try:
            async with session.get(url, timeout=timeout) as resp:
                if resp.status != 200:
                    raise UpstreamNotFoundError(url, f"foreign layer answered {resp.status}")
                spool.set_size(resp.content_length)
                notice.publish(spool.path, resp.content_length)
                await self._stream(resp.content.iter_chunked(1024 * 1024), spool, digest, url)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnreachableError(url, f"foreign layer: {exc}") from exc
        log.info("proxy %s: cached foreign layer %s from %s", self.name, digest, url)
        await self._commit(spool, image, digest)

    # -- listings ----------------------------------------------------------------------
    async def list_tags(self, image: str, last: str | None, n: int | None) -> list[str]:
        try:
            page = await self.upstream.list_tags(image)
            names = sorted(page.tags)
        except UpstreamError as err:
            if err.kind == "not_found":
                raise RegistryError("NAME_UNKNOWN", f"image {image!r} not found upstream") from None
            names = self.meta.list_tags(self.repo_id, image, None, None)
            if not names:
                raise upstream_unavailable(err, self.name) from None
        if last is not None:
            names = [t for t in names if t > last]
        return names if n is None else names[:n]

    async def catalog(self, last: str | None, n: int | None) -> list[str]:
        return self.meta.list_images(self.repo_id, last, n)

    async def referrers(
        self, image: str, digest: Digest, artifact_type: str | None
    ) -> list[dict[str, Any]]:
        from portway.repos.hosted import referrer_entries

        return referrer_entries(self.meta, self.repo_id, image, digest, artifact_type)

    async def search(self, query: str, n: int, page: int) -> dict[str, Any] | None:
        try:
            found = await self.upstream.search(query, n, page)
        except UpstreamError as err:
            raise upstream_unavailable(err, self.name) from None
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


async def _mirror(lock: WorkerLock, notice: SpoolNotice, spool: Spool) -> None:
    """Another worker holds `lock` and fetches the blob: copy its spool file into ours as it
    grows (our clients are served meanwhile), until the lock is ours."""
    source: int | None = None
    delay = POLL_MIN
    try:
        while not lock.try_acquire():
            if source is None:
                source = _open_noticed(notice, spool)
            moved = await _copy_growing(source, spool) if source is not None else 0
            delay = POLL_MIN if moved else min(delay * 2, POLL_MAX)
            await asyncio.sleep(delay)
    finally:
        if source is not None:
            os.close(source)


def _open_noticed(notice: SpoolNotice, spool: Spool) -> int | None:
    """The holder's spool file, opened, once its notice is out (the length goes to our
    spool); None before that, or when it has just finished and removed it (then the lock
    tells what became of it)."""
    found = notice.read()
    if found is None:
        return None
    try:
        source = os.open(found[0], os.O_RDONLY)
    except FileNotFoundError:
        return None
    if not spool.started:
        spool.set_size(found[1])
    return source


async def _copy_growing(source: int, spool: Spool) -> int:
    """Append what `source` holds past the spool's length; returns the bytes copied."""
    copied = 0
    while data := os.pread(source, 1024 * 1024, spool.written):
        await spool.write(data)
        copied += len(data)
    return copied


def foreign_urls(manifest_body: bytes, digest: str) -> list[str]:
    """The `urls` a manifest gives for its layer `digest` (a non-distributable layer)."""
    try:
        doc = json.loads(manifest_body)
    except ValueError:
        return []
    layers = doc.get("layers") if isinstance(doc, dict) else None
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, dict) and layer.get("digest") == digest:
            urls = layer.get("urls")
            return [u for u in urls if isinstance(u, str)] if isinstance(urls, list) else []
    return []
