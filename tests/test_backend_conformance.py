"""The BlobBackend protocol, the same tests on the filesystem and on S3 (a real Ceph RGW).

Every method of `portway.storage.backend.BlobBackend` is exercised on both; what only one of
them can do (presigned URLs, multipart copies) is checked where it exists, and the other's
answer ("no URL") is checked too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import requests

from portway.storage.backend import BlobBackend, PendingWrite
from portway.storage.filesystem import FilesystemBackend
from portway.storage.s3 import MiB, S3Backend, S3Settings
from support.ceph import CephRGW

Scenario = Callable[[BlobBackend], Awaitable[None]]
Opener = Callable[[], contextlib.AbstractAsyncContextManager[BlobBackend]]
PART = 5 * MiB


def _settings(rgw: CephRGW, bucket: str, **extra: object) -> S3Settings:
    base: dict[str, object] = {
        "bucket": bucket,
        "endpoint": rgw.endpoint,
        "region": rgw.region,
        "access_key": rgw.access_key,
        "secret_key": rgw.secret_key,
        "prefix": f"t-{uuid.uuid4().hex[:8]}",  # every test its own folder in the bucket
        "part_size": PART,
        "copy_part_limit": 6 * MiB,  # so the 40 MiB copy goes through UploadPartCopy
    }
    base.update(extra)
    return S3Settings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def bucket(ceph_rgw: CephRGW) -> str:
    return ceph_rgw.make_bucket(f"conformance-{uuid.uuid4().hex[:8]}")


@pytest.fixture(params=["filesystem", "s3"])
def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """An opener for a fresh, empty backend of the kind the test is parametrised with."""
    if request.param == "filesystem":

        @contextlib.asynccontextmanager
        async def filesystem() -> AsyncIterator[BlobBackend]:
            yield FilesystemBackend(tmp_path / "storage")

        return filesystem
    rgw: CephRGW = request.getfixturevalue("ceph_rgw")
    settings = _settings(rgw, request.getfixturevalue("bucket"))

    @contextlib.asynccontextmanager
    async def s3() -> AsyncIterator[BlobBackend]:
        backend = await S3Backend.open(settings)
        try:
            yield backend
        finally:
            await backend.close()

    return s3


def run(open_backend: Opener, scenario: Scenario) -> None:
    async def main() -> None:
        async with open_backend() as backend:
            await scenario(backend)

    asyncio.run(main())


async def put(backend: BlobBackend, key: str, *chunks: bytes) -> None:
    writer = await backend.create(key)
    for chunk in chunks:
        await writer.write(chunk)
    await writer.commit()


async def read_all(backend: BlobBackend, key: str, offset: int = 0, length: int | None = None
                   ) -> bytes:
    return b"".join([chunk async for chunk in backend.read(key, offset, length)])


async def keys(backend: BlobBackend, prefix: str) -> set[str]:
    return {key async for key in backend.list(prefix)}


def test_write_commit_stat_and_ranged_reads(open_backend: Opener) -> None:
    async def scenario(b: BlobBackend) -> None:
        writer = await b.create("blobs/ab/one")
        await writer.write(b"hello ")
        await writer.write(b"world")
        assert writer.size == 11
        assert await b.stat("blobs/ab/one") is None, "visible before commit"
        assert await keys(b, "") == set()
        info = await writer.commit()
        assert (info.key, info.size) == ("blobs/ab/one", 11)
        stat = await b.stat("blobs/ab/one")
        assert stat is not None and stat.size == 11
        assert abs(stat.mtime - time.time()) < 300
        assert await read_all(b, "blobs/ab/one") == b"hello world"
        assert await read_all(b, "blobs/ab/one", 6) == b"world"
        assert await read_all(b, "blobs/ab/one", 2, 3) == b"llo"
        assert await read_all(b, "blobs/ab/one", 6, 100) == b"world"  # cut at the end
        assert await read_all(b, "blobs/ab/one", 11) == b""
        assert await read_all(b, "blobs/ab/one", 3, 0) == b""
        await put(b, "blobs/ab/one", b"replaced")  # a new object replaces the old at once
        assert await read_all(b, "blobs/ab/one") == b"replaced"
        await put(b, "empty")
        assert await read_all(b, "empty") == b""
        assert (await b.stat("empty")) is not None
        with pytest.raises(ValueError):
            await writer.commit()  # a writer commits once
        local = b.local_path("blobs/ab/one")  # only a folder has files to sendfile
        if isinstance(b, FilesystemBackend):
            assert local is not None and local.read_bytes() == b"replaced"
        else:
            assert local is None

    run(open_backend, scenario)


def test_missing_keys(open_backend: Opener) -> None:
    async def scenario(b: BlobBackend) -> None:
        assert await b.stat("nope") is None
        with pytest.raises(FileNotFoundError):
            await read_all(b, "nope")
        with pytest.raises(FileNotFoundError):
            await b.copy("nope", "other")
        assert await b.stat("other") is None
        await b.delete("nope")  # deleting what is not there is no error
        assert await keys(b, "nothing/here") == set()
        with pytest.raises(ValueError):
            await b.stat("../escape")

    run(open_backend, scenario)


def test_abort_leaves_nothing(open_backend: Opener) -> None:
    async def scenario(b: BlobBackend) -> None:
        await put(b, "kept", b"old")
        writer = await b.create("kept")
        await writer.write(os.urandom(PART + 1024))  # past one part: a multipart upload on S3
        await writer.abort()
        await writer.abort()  # twice is fine
        with pytest.raises(ValueError):
            await writer.write(b"more")
        assert await read_all(b, "kept") == b"old", "an aborted write touched the object"
        assert await b.pending_writes(older_than=0) == []
        assert await keys(b, "") == {"kept"}

    run(open_backend, scenario)


def test_interrupted_writer_is_invisible_and_purged_as_pending(open_backend: Opener) -> None:
    """A writer that never commits (its node died) shows nowhere; the purge finds it by age."""

    async def scenario(b: BlobBackend) -> None:
        writer = await b.create("uploads/u1")
        await writer.write(os.urandom(PART + 4096))
        await asyncio.sleep(1.1)  # S3 keeps the upload's start to the second
        assert await b.stat("uploads/u1") is None
        assert await keys(b, "") == set()
        assert await b.pending_writes(older_than=3600) == []
        pending = await b.pending_writes(older_than=0.5)
        assert len(pending) == 1 and isinstance(pending[0], PendingWrite)
        assert pending[0].key in (None, "uploads/u1")  # S3 records the key; a folder need not
        assert time.time() - 300 < pending[0].started <= time.time()
        await b.abort_pending(pending[0])
        assert await b.pending_writes(older_than=0) == []
        await writer.abort()  # the dead writer's own clean-up finds nothing left: no error
        assert await b.stat("uploads/u1") is None

    run(open_backend, scenario)


def test_write_whose_pending_upload_was_purged_publishes_nothing(open_backend: Opener) -> None:
    """The purge removed a slow writer's upload under it: the writer fails (at the latest
    at commit), aborts, and nothing appears."""

    async def scenario(b: BlobBackend) -> None:
        writer = await b.create("victim")
        await writer.write(os.urandom(PART + 10))
        await asyncio.sleep(1.1)
        for pending in await b.pending_writes(older_than=0.5):
            await b.abort_pending(pending)
        with pytest.raises(Exception):  # noqa: B017 - FileNotFoundError, or S3's NoSuchUpload
            await writer.write(os.urandom(PART))
            await writer.commit()
        assert await b.stat("victim") is None
        assert await b.pending_writes(older_than=0) == []
        assert await keys(b, "") == set()

    run(open_backend, scenario)


def test_resumable_multipart_write(open_backend: Opener) -> None:
    """A multipart write's state is its token and parts: another backend object (another
    node) stores the next part and completes it; nothing shows before `complete_parts`, and
    an abandoned one is a pending write the purge removes."""

    async def scenario(b: BlobBackend) -> None:
        first, second, last = os.urandom(PART), os.urandom(PART + 7), b"end"
        token = await b.begin_parts("uploads/s1/data")
        parts = [await b.put_part("uploads/s1/data", token, 1, first)]
        async with open_backend() as other:  # a second node, same storage
            parts.append(await other.put_part("uploads/s1/data", token, 2, second))
            parts.append(await other.put_part("uploads/s1/data", token, 3, last))
            assert await other.stat("uploads/s1/data") is None, "visible before complete"
            assert [p.size for p in parts] == [PART, PART + 7, 3]
            info = await other.complete_parts("uploads/s1/data", token, parts)
        assert info.size == 2 * PART + 10
        assert await read_all(b, "uploads/s1/data") == first + second + last
        assert await b.pending_writes(older_than=0) == []
        dead = await b.begin_parts("uploads/s2/data")
        await b.put_part("uploads/s2/data", dead, 1, b"x" * 10)
        await asyncio.sleep(1.1)
        pending = await b.pending_writes(older_than=0.5)
        assert len(pending) == 1
        await b.abort_pending(pending[0])
        assert await b.pending_writes(older_than=0) == []
        with pytest.raises(FileNotFoundError):
            await b.put_part("uploads/s2/data", dead, 2, b"late")
        assert await keys(b, "uploads") == {"uploads/s1/data"}
        assert b.part_minimum in (1, PART)

    run(open_backend, scenario)


def test_copy_delete_and_list(open_backend: Opener) -> None:
    async def scenario(b: BlobBackend) -> None:
        await put(b, "a/1", b"one")
        await put(b, "a/b/2", b"two")
        await put(b, "ab/3", b"three")  # shares a string prefix with "a", not the folder
        open_writer = await b.create("a/pending")
        await open_writer.write(b"not yet")
        assert await keys(b, "a") == {"a/1", "a/b/2"}
        assert await keys(b, "a/") == {"a/1", "a/b/2"}
        assert await keys(b, "") == {"a/1", "a/b/2", "ab/3"}
        await b.copy("a/1", "c/copied")
        assert await read_all(b, "c/copied") == b"one"
        await b.copy("a/b/2", "c/copied")  # over an existing object
        assert await read_all(b, "c/copied") == b"two"
        assert await read_all(b, "a/b/2") == b"two", "the source stays"
        await b.delete("a/1")
        assert await b.stat("a/1") is None
        assert await keys(b, "") == {"a/b/2", "ab/3", "c/copied"}
        await open_writer.abort()

    run(open_backend, scenario)


def test_large_object_round_trip(open_backend: Opener) -> None:
    """40 MiB in uneven chunks: 8 parts on S3, read back whole and across a part boundary,
    then copied (UploadPartCopy ranges on S3)."""
    data = os.urandom(40 * MiB)
    digest = hashlib.sha256(data).hexdigest()

    async def scenario(b: BlobBackend) -> None:
        step = 1_000_003
        writer = await b.create("big")
        for start in range(0, len(data), step):
            await writer.write(data[start : start + step])
        assert (await writer.commit()).size == len(data)
        info = await b.stat("big")
        assert info is not None and info.size == len(data)
        hasher = hashlib.sha256()
        async for chunk in b.read("big"):
            hasher.update(chunk)
        assert hasher.hexdigest() == digest
        assert await read_all(b, "big", PART - 10, 20) == data[PART - 10 : PART + 10]
        await b.copy("big", "big-copy")
        copied = hashlib.sha256()
        async for chunk in b.read("big-copy"):
            copied.update(chunk)
        assert copied.hexdigest() == digest

    run(open_backend, scenario)


def test_presigned_get(open_backend: Opener, request: pytest.FixtureRequest) -> None:
    """S3 signs for the public endpoint, the URL works from a plain HTTP client until it
    expires; a folder has no URL (Portway streams it)."""
    if "filesystem" in request.node.callspec.id:

        async def no_url(b: BlobBackend) -> None:
            await put(b, "k", b"x")
            assert await b.presign_get("k", 60) is None

        run(open_backend, no_url)
        return
    rgw: CephRGW = request.getfixturevalue("ceph_rgw")
    public = rgw.endpoint.replace("127.0.0.1", "localhost")
    settings = _settings(rgw, request.getfixturevalue("bucket"), public_endpoint=public)

    async def scenario() -> None:
        b = await S3Backend.open(settings)
        try:
            await put(b, "blobs/signed", b"signed bytes")
            url = await b.presign_get("blobs/signed", 60)
            assert url is not None and url.startswith(public + "/")
            got = await asyncio.to_thread(requests.get, url, timeout=30)
            assert (got.status_code, got.content) == (200, b"signed bytes"), got.text
            short = await b.presign_get("blobs/signed", 1)
            assert short is not None
            await asyncio.sleep(2.2)
            late = await asyncio.to_thread(requests.get, short, timeout=30)
            assert late.status_code == 403, late.text
        finally:
            await b.close()

    asyncio.run(scenario())


def test_streamed_256_mib_write_to_s3_keeps_memory_bounded(
    ceph_rgw: CephRGW, bucket: str
) -> None:
    """The writer holds the filling part and the parts in flight, never the object."""
    settings = _settings(ceph_rgw, bucket, part_size=8 * MiB, parts_in_flight=2)
    block = os.urandom(MiB)
    blocks = [block[i:] + block[:i] for i in range(7)]  # so no part repeats another
    total = 256 * MiB

    async def scenario() -> tuple[int, str]:
        b = await S3Backend.open(settings)
        try:
            sent = hashlib.sha256()
            tracemalloc.start()
            try:
                writer = await b.create("huge")
                for i in range(total // MiB):
                    sent.update(blocks[i % 7])
                    await writer.write(blocks[i % 7])
                await writer.commit()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            got = hashlib.sha256()
            async for piece in b.read("huge"):
                got.update(piece)
            assert got.hexdigest() == sent.hexdigest()
            await b.delete("huge")
            return peak, got.hexdigest()
        finally:
            await b.close()

    peak, _ = asyncio.run(scenario())
    # the part filling and its copy into bytes, two parts in flight each copied once more by
    # the HTTP client (botocore hands aiohttp a BytesIO), and a little slack: 6 parts + 4 MiB
    limit = (2 + 2 * settings.parts_in_flight) * settings.part_size + 4 * MiB
    assert peak < limit, f"peak {peak / MiB:.1f} MiB for a 256 MiB object"
