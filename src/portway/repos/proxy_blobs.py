"""The blob half of a proxy repository: serve from the cache, else stream a download that
fills it (one per blob among all workers; ADR 4), and answer HEAD with an upstream HEAD."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterable

import aiohttp

from portway.config import RepositoryConfig
from portway.coordination.flock import FileLocks
from portway.coordination.interfaces import Locks
from portway.db.store import MetadataStore
from portway.lifecycle.guard import Guard
from portway.observe.metrics import proxy_events
from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from portway.repos.base import BlobBody
from portway.repos.proxy_errors import upstream_unavailable
from portway.repos.spoolcopy import foreign_urls, mirror
from portway.storage.backend import ObjectWriter
from portway.storage.blobstore import BlobStore
from portway.upstream.client import UpstreamRegistry
from portway.upstream.crossworker import SpoolNotice
from portway.upstream.errors import (
    UpstreamDigestMismatchError,
    UpstreamError,
    UpstreamNotFoundError,
    UpstreamUnreachableError,
)
from portway.upstream.heads import SharedHeads
from portway.upstream.singleflight import SharedDownloads, Spool, SpoolReader

log = logging.getLogger("portway.proxy")


class ProxyBlobs:
    """Mixed into `ProxyRepository`, which sets these attributes."""

    name: str
    config: RepositoryConfig
    repo_id: int
    meta: MetadataStore
    blobs: BlobStore
    guard: Guard
    _downloads: SharedDownloads[str] | None
    _heads: SharedHeads | None
    _locks: Locks | None

    @property
    def remote(self) -> str:
        return self.config.remote_url or ""

    @property
    def upstream(self) -> UpstreamRegistry:
        raise NotImplementedError

    def downloads(self) -> SharedDownloads[str]:
        if self._downloads is None:
            self._downloads = SharedDownloads(self.blobs.spool_dir())
        return self._downloads

    def heads(self) -> SharedHeads:
        if self._heads is None:
            self._heads = SharedHeads(self.blobs.lock_dir(), locks=self.locks())
        return self._heads

    def locks(self) -> Locks:
        """Single flight among workers and nodes: the coordinator's locks, else flock."""
        if self._locks is None:
            self._locks = FileLocks(self.blobs.lock_dir)
        return self._locks

    def _lock_name(self, kind: str, *parts: str) -> str:
        key = "\0".join((str(self.repo_id), *parts))
        return f"{kind}-{hashlib.sha256(key.encode()).hexdigest()}"

    # -- blobs -------------------------------------------------------------------------
    async def has_blob(self, image: str, digest: Digest) -> bool:
        return await self.meta.blob_size(self.repo_id, image, str(digest)) is not None

    async def serves_blob(self, image: str, digest: Digest) -> bool:
        """Cached, or referenced by a manifest this proxy served (so its upstream has it)."""
        return await self.has_blob(image, digest) or await self.meta.references(
            self.repo_id, image, str(digest)
        )

    async def stat_blob(self, image: str, digest: Digest) -> int:
        """The length of a blob: from the cache, from a download in progress, else from an
        upstream HEAD (shared by all workers); a HEAD never downloads the blob."""
        size = await self.meta.blob_size(self.repo_id, image, str(digest))
        if size is not None and await self.blobs.intact(digest, size):
            proxy_events.hit(self.name, "blob")
            return size
        proxy_events.miss(self.name, "blob")
        fetching = self._lock_name("b", image, str(digest))
        noticed = SpoolNotice(self.blobs.lock_dir(), fetching).read()
        if noticed is not None and noticed[1] is not None:
            return noticed[1]  # another worker is downloading it and told the length
        if not self.downloads().in_flight(f"{image}@{digest}"):
            try:
                size = await self.heads().size(
                    self._lock_name("h", image, str(digest)),
                    lambda: self.upstream.head_blob(image, str(digest)),
                )
            except UpstreamError as err:
                if err.kind != "not_found" or await self._foreign_url(image, digest) is None:
                    raise self._blob_error(err, digest) from None
                size = None  # a foreign layer: only its download tells
            if size is not None:
                return size
        reader = await self._follow(image, digest)
        try:
            return await self._wait_size(reader, digest)
        finally:
            reader.close()

    async def open_blob(self, image: str, digest: Digest) -> BlobBody:
        size = await self.meta.blob_size(self.repo_id, image, str(digest))
        if size is not None and await self.blobs.intact(digest, size):
            proxy_events.hit(self.name, "blob")
            return self.blobs.body(digest, size)
        proxy_events.miss(self.name, "blob")
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
            lock = self.locks().lock(name)
            notice = SpoolNotice(self.blobs.lock_dir(), name)
            if not await lock.try_acquire():
                await mirror(lock, notice, spool)
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
                    url = None
                    if err.kind == "not_found":
                        url = await self._foreign_url(image, digest)
                    if url is None:
                        raise
                    await self._fill_foreign(url, image, digest, spool, notice)
            finally:
                notice.withdraw()
                await lock.release()

        return self.downloads().follow(key, fill)

    async def _linked(self, image: str, digest: Digest) -> bool:
        return (
            await self.meta.blob_size(self.repo_id, image, str(digest)) is not None
            and await self.blobs.stat(digest) is not None
        )

    async def _copy_stored(self, digest: Digest, spool: Spool) -> None:
        """The rest of a blob another worker cached meanwhile, read from the store."""
        if not spool.started:
            spool.set_size(await self.blobs.stat(digest))
        async for chunk in self.blobs.read(digest, spool.written):
            await spool.write(chunk)

    async def _wait_size(self, reader: SpoolReader, digest: Digest) -> int:
        try:
            size = await reader.wait_started()
        except UpstreamError as err:
            raise self._blob_error(err, digest) from None
        if size is None:
            # The upstream sent no length: wait for the whole blob (it is cached then).
            async for _ in reader:
                pass
            size = reader.position
        return size

    def _blob_error(self, err: UpstreamError, digest: Digest) -> RegistryError:
        proxy_events.error(self.name, err.kind)
        if err.kind == "not_found":
            return RegistryError(
                "BLOB_UNKNOWN", f"blob {digest} not found in {self.config.remote_url}"
            )
        return upstream_unavailable(err, self.name, self.remote)

    async def _fill(self, image: str, digest: Digest, spool: Spool, notice: SpoolNotice) -> None:
        """Download once into the spool; publish into the cache only after the digest
        verified. Runs in its own task: a client hanging up does not stop it."""
        cache = await self.blobs.fill_writer(digest)
        try:
            async with self.upstream.open_blob(image, str(digest), verify=False) as blob:
                spool.set_size(blob.size)
                notice.publish(spool.path, blob.size)
                cache = await self._stream(blob, spool, digest, blob.url, cache)
            await self._commit(spool, image, digest, cache)
        except BaseException:
            await _abort(cache)
            raise

    async def _stream(
        self,
        chunks: AsyncIterable[bytes],
        spool: Spool,
        digest: Digest,
        source: str,
        cache: ObjectWriter | None = None,
    ) -> ObjectWriter | None:
        """Copy into the spool (and tee into `cache`, the backend's writer at the blob's
        address, where there is one) while a worker thread hashes the chunk. The last chunk
        is held back from the spool until the digest verified: no client receives the whole
        of a corrupted blob; `cache` is committed only after that. Returns `cache`, or None when
        writing it failed (the fill goes on from the spool, which is then uploaded whole)."""
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
            if cache is not None:
                cache = await self._tee(cache, chunk, digest)
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
        return cache

    async def _tee(self, cache: ObjectWriter, chunk: bytes, digest: Digest) -> ObjectWriter | None:
        try:
            await cache.write(chunk)  # a part is sent while the next fills: bounded memory
        except Exception as exc:
            log.warning(
                "proxy %s: writing %s to storage failed, uploading it once downloaded instead: %s",
                self.name,
                digest,
                exc,
            )
            await _abort(cache)
            return None
        return cache

    async def _commit(
        self, spool: Spool, image: str, digest: Digest, cache: ObjectWriter | None = None
    ) -> None:
        # Verified: release the readers now; the cache commit (fsync and link, or the last
        # part and completing the upload; then the database) need not hold up the clients.
        spool.finish()
        await self.guard.claim(self.repo_id, image, str(digest))
        if cache is not None:
            await self.blobs.published(cache, digest)
        else:
            await self.blobs.publish_file(spool.path, digest)
        await self.meta.link_blob(self.repo_id, image, str(digest), spool.written)

    # -- foreign (non-distributable) layers --------------------------------------------
    async def _foreign_url(self, image: str, digest: Digest) -> str | None:
        """With `cache_foreign_layers`, the first URL of a cached manifest's layer `digest`
        that the allow-list (`foreign_layer_urls`, regular expressions) accepts."""
        if not self.config.cache_foreign_layers:
            return None
        for body in await self.meta.manifest_bodies(self.repo_id, image):
            for url in foreign_urls(body, str(digest)):
                if any(re.fullmatch(p, url) for p in self.config.foreign_layer_urls):
                    return url
        return None

    async def _fill_foreign(
        self, url: str, image: str, digest: Digest, spool: Spool, notice: SpoolNotice
    ) -> None:
        session = self.upstream.session
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)
        cache = await self.blobs.fill_writer(digest)
        try:
            try:
                async with session.get(url, timeout=timeout) as resp:
                    if resp.status != 200:
                        raise UpstreamNotFoundError(url, f"foreign layer answered {resp.status}")
                    spool.set_size(resp.content_length)
                    notice.publish(spool.path, resp.content_length)
                    chunks = resp.content.iter_chunked(1024 * 1024)
                    cache = await self._stream(chunks, spool, digest, url, cache)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise UpstreamUnreachableError(url, f"foreign layer: {exc}") from exc
            log.info("proxy %s: cached foreign layer %s from %s", self.name, digest, url)
            await self._commit(spool, image, digest, cache)
        except BaseException:
            await _abort(cache)
            raise


async def _abort(cache: ObjectWriter | None) -> None:
    """Drop a tee whose fill failed: nothing of it becomes visible (the upload is aborted);
    a committed one is left alone."""
    if cache is not None:
        with contextlib.suppress(Exception):
            await asyncio.shield(cache.abort())
