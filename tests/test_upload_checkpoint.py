"""A closing PUT on another worker of the same host uses the digest the appending worker
recorded on the session file (ADR 34). It hashes the stored bytes again when the record is
from another boot, covers fewer bytes than the file holds, or is missing, and a record never
lets a wrong digest through. Two workers here are two FileUploads (each its own running
hashes) on one real data folder."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from portway.storage import checkpoint
from portway.storage.blobstore import blob_key
from portway.storage.filesystem import FilesystemBackend
from portway.storage.fs_uploads import FileUploads, upload_key

MiB = 1024 * 1024


def digest_of(data: bytes) -> Digest:
    return Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())


async def body(data: bytes) -> AsyncIterator[bytes]:
    for at in range(0, len(data), 256 * 1024):
        yield data[at : at + 256 * 1024]


@pytest.fixture
def workers(tmp_path: Path) -> tuple[FileUploads, FileUploads]:
    backend = FilesystemBackend(tmp_path / "blobs")
    return FileUploads(backend, blob_key), FileUploads(backend, blob_key)


@pytest.fixture
def reread(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The sessions hashed again from their stored bytes (the real hash still runs)."""
    seen: list[str] = []
    real = FileUploads._hash_file

    def counting(self: FileUploads, key: str, algorithm: str) -> str:
        seen.append(key)
        return real(self, key, algorithm)

    monkeypatch.setattr(FileUploads, "_hash_file", counting)
    yield seen


async def appended(uploads: FileUploads, data: bytes) -> str:
    """A new session on `uploads` holding `data`, appended in one request."""
    session = await uploads.new_upload()
    await uploads.append(session, body(data))
    return session


def stored(uploads: FileUploads, digest: Digest) -> bytes:
    path = uploads.backend.local_path(blob_key(digest))
    assert path is not None
    return path.read_bytes()


def test_another_worker_closes_with_the_recorded_digest(
    workers: tuple[FileUploads, FileUploads], reread: list[str]
) -> None:
    a, b = workers
    data = os.urandom(5 * MiB + 17)
    digest = digest_of(data)

    async def scenario() -> None:
        session = await b.new_upload()  # the POST on one worker, the PATCH on the other
        half = 3 * MiB
        assert await a.append(session, body(data[:half])) == half
        assert await a.append(session, body(data[half:]), expected_offset=half) == len(data)
        assert await b.commit(session, digest) == len(data)

    asyncio.run(scenario())
    assert reread == []
    assert stored(a, digest) == data


def test_a_wrong_digest_is_refused_without_reading_the_bytes(
    workers: tuple[FileUploads, FileUploads], reread: list[str]
) -> None:
    a, b = workers
    data = os.urandom(2 * MiB)
    wrong = digest_of(b"another layer")

    async def scenario() -> None:
        session = await appended(a, data)
        with pytest.raises(RegistryError) as refused:
            await b.commit(session, wrong)
        assert refused.value.code == "DIGEST_INVALID"

    asyncio.run(scenario())
    assert reread == []
    published = a.backend.local_path(blob_key(wrong))
    assert published is not None and not published.exists()


def test_a_record_from_another_boot_is_not_trusted(
    workers: tuple[FileUploads, FileUploads], reread: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the machine restarts, the bytes under a record may never have reached the disk:
    the record says one thing, the file holds another, and the file decides."""
    a, b = workers
    data = os.urandom(MiB)
    digest = digest_of(data)

    session = asyncio.run(appended(a, data))
    path = a.backend.local_path(upload_key(session))
    assert path is not None
    recorded = os.getxattr(path, checkpoint.ATTRIBUTE).decode()
    assert recorded == f"{checkpoint.boot_id()} {len(data)} {digest.hex}"
    lost = bytes(len(data))  # what a crash of the machine may leave: the size, not the bytes
    with open(path, "r+b") as f:
        f.write(lost)
    monkeypatch.setattr(checkpoint, "boot_id", lambda: "another-boot")
    with pytest.raises(RegistryError) as refused:
        asyncio.run(b.commit(session, digest))
    assert refused.value.code == "DIGEST_INVALID"
    assert reread == [upload_key(session)]


def test_bytes_appended_by_a_worker_without_the_hash_are_hashed_again(
    workers: tuple[FileUploads, FileUploads], reread: list[str]
) -> None:
    """a appends the first chunk (and records it); b, which never saw it, appends the second
    and cannot record; a closes. a's record covers fewer bytes than the file: read back."""
    a, b = workers
    first, second = os.urandom(MiB), os.urandom(MiB + 5)
    digest = digest_of(first + second)

    async def scenario() -> None:
        session = await a.new_upload()
        await a.append(session, body(first))
        await b.append(session, body(second), expected_offset=len(first))
        assert await a.commit(session, digest) == len(first) + len(second)

    asyncio.run(scenario())
    assert len(reread) == 1
    assert stored(a, digest) == first + second


def test_a_filesystem_without_user_attributes_hashes_again(
    workers: tuple[FileUploads, FileUploads],
    reread: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", refuse)
    a, b = workers
    data = os.urandom(MiB)
    digest = digest_of(data)

    async def scenario() -> None:
        assert await b.commit(await appended(a, data), digest) == len(data)

    asyncio.run(scenario())
    assert len(reread) == 1
    assert stored(a, digest) == data
