"""Upload sessions with no node affinity on S3 (a real Ceph RGW): two nodes (each its own
metadata store connection, S3 client and running hashes) share one database and one bucket;
any of them continues any session, and the one closing it re-hashes what it did not see."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from portway.config import RepositoryConfig
from portway.db.store import MetadataStore
from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from portway.repos.hosted import HostedRepository, UploadState
from portway.storage import part_uploads
from portway.storage.blobstore import BlobStore
from portway.storage.fsspool import LocalSpool
from portway.storage.part_uploads import PartUploads
from portway.storage.s3 import MiB, S3Backend, S3Settings
from support.ceph import CephRGW

PART = 5 * MiB


@dataclass
class Node:
    meta: MetadataStore
    backend: S3Backend
    blobs: BlobStore
    repo: HostedRepository


@pytest.fixture(scope="module")
def bucket(ceph_rgw: CephRGW) -> str:
    return ceph_rgw.make_bucket(f"sessions-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def settings(ceph_rgw: CephRGW, bucket: str) -> S3Settings:
    return S3Settings(
        bucket=bucket,
        endpoint=ceph_rgw.endpoint,
        region=ceph_rgw.region,
        access_key=ceph_rgw.access_key,
        secret_key=ceph_rgw.secret_key,
        prefix=f"t-{uuid.uuid4().hex[:8]}",
        part_size=PART,
    )


@contextlib.asynccontextmanager
async def node(tmp_path: Path, settings: S3Settings, name: str) -> AsyncIterator[Node]:
    meta = MetadataStore.open_sqlite(tmp_path / "portway.db")
    backend = await S3Backend.open(settings)
    sessions = PartUploads(backend, meta, BlobStore.blob_key, settings.part_size)
    spool = LocalSpool(tmp_path / name / "spool", tmp_path / name / "locks")
    blobs = BlobStore(backend, sessions=sessions, spool=spool)
    cfg = RepositoryConfig(name="docker-hosted", type="hosted")
    repo = HostedRepository(cfg, meta.ensure_repository(cfg.name, cfg.type), meta, blobs)
    try:
        yield Node(meta, backend, blobs, repo)
    finally:
        await backend.close()
        meta.close()


async def body(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        for at in range(0, len(piece), MiB):
            yield piece[at : at + MiB]


def digest_of(data: bytes) -> Digest:
    return Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())


async def stored(n: Node, digest: Digest) -> bytes:
    return b"".join([c async for c in n.blobs.read(digest)])


async def leftovers(n: Node, upload_id: str) -> set[str]:
    return {k async for k in n.backend.list(f"uploads/{upload_id}")}


@pytest.fixture
def rehashes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The keys re-hashed from storage at closing PUTs (the real re-hash still runs)."""
    seen: list[str] = []
    real = part_uploads.rehash

    async def counting(backend: object, key: str, algorithm: str) -> str:
        seen.append(key)
        return await real(backend, key, algorithm)  # type: ignore[arg-type]

    monkeypatch.setattr(part_uploads, "rehash", counting)
    yield seen


def test_chunks_on_alternating_nodes_make_one_verified_blob(
    tmp_path: Path, settings: S3Settings, rehashes: list[str]
) -> None:
    """Small chunks (below the part minimum, kept as the tail object), a chunk spanning parts,
    each on another node; the closing node never saw the first bytes, so it re-hashes."""
    pieces = [os.urandom(3 * MiB), os.urandom(8 * MiB + 5), os.urandom(1000), os.urandom(2 * MiB)]
    data = b"".join(pieces)
    digest = digest_of(data)

    async def scenario() -> None:
        async with node(tmp_path, settings, "a") as a, node(tmp_path, settings, "b") as b:
            state = await a.repo.start_upload("app")
            nodes = [a, b, a, b]
            for n, piece in zip(nodes, pieces, strict=True):
                before = await n.repo.upload_state("app", state.id)
                state = await n.repo.append_upload(before, body(piece), len(piece), before.offset)
            assert (await b.repo.upload_state("app", state.id)).offset == len(data)
            assert await a.blobs.stat(digest) is None, "visible before the closing PUT"
            assert await a.repo.finish_upload(state, digest) == len(data)
            assert await stored(b, digest) == data
            assert rehashes, "the closing node did not see every byte: it must re-hash"
            assert await leftovers(a, state.id) == set()
            assert await a.backend.pending_writes(older_than=0) == []
            assert await b.repo.has_blob("app", digest)

    asyncio.run(scenario())


def test_one_node_uses_its_running_hash(
    tmp_path: Path, settings: S3Settings, rehashes: list[str]
) -> None:
    data = os.urandom(12 * MiB + 3)
    digest = digest_of(data)

    async def scenario() -> None:
        async with node(tmp_path, settings, "a") as a:
            state = await a.repo.start_upload("app")
            for at in (0, 4 * MiB, 11 * MiB):
                piece = data[at : {0: 4 * MiB, 4 * MiB: 11 * MiB}.get(at, len(data))]
                state = await a.repo.append_upload(state, body(piece), len(piece), state.offset)
            await a.repo.finish_upload(state, digest)
            assert await stored(a, digest) == data
        assert rehashes == []

    asyncio.run(scenario())


def test_wrong_digest_publishes_nothing(tmp_path: Path, settings: S3Settings) -> None:
    data = os.urandom(6 * MiB)
    wrong = digest_of(b"something else")

    async def scenario() -> None:
        async with node(tmp_path, settings, "a") as a, node(tmp_path, settings, "b") as b:
            state = await a.repo.start_upload("app")
            state = await a.repo.append_upload(state, body(data), len(data))
            with pytest.raises(RegistryError) as err:
                await b.repo.finish_upload(state, wrong)
            assert err.value.code == "DIGEST_INVALID"
            assert await a.blobs.stat(wrong) is None
            assert await a.blobs.stat(digest_of(data)) is None
            assert await a.meta.get_upload(state.id) is None  # the session is gone with its data
            assert await leftovers(a, state.id) == set()
            assert await a.backend.pending_writes(older_than=0) == []
            # monolithic: the same refusal, nothing left
            with pytest.raises(RegistryError):
                await b.repo.push_blob("app", body(data), wrong, len(data))
            assert {k async for k in a.backend.list("")} == set()

    asyncio.run(scenario())


def test_a_cut_chunk_leaves_the_session_where_it_was(
    tmp_path: Path, settings: S3Settings
) -> None:
    """A body that fails halfway (client gone) past a whole part: the session keeps its
    offset, the next chunk (on the other node) continues it, the blob is right."""
    head, lost, rest = os.urandom(2 * MiB), os.urandom(7 * MiB), os.urandom(6 * MiB)

    async def cut() -> AsyncIterator[bytes]:
        async for chunk in body(lost):
            yield chunk
        raise ConnectionResetError("client went away")

    async def scenario() -> None:
        async with node(tmp_path, settings, "a") as a, node(tmp_path, settings, "b") as b:
            state = await a.repo.start_upload("app")
            state = await a.repo.append_upload(state, body(head), len(head))
            with pytest.raises(ConnectionResetError):
                await a.repo.append_upload(state, cut(), None)
            again = await b.repo.upload_state("app", state.id)
            assert again.offset == len(head)
            again = await b.repo.append_upload(again, body(rest), len(rest), again.offset)
            await a.repo.finish_upload(again, digest_of(head + rest))
            assert await stored(a, digest_of(head + rest)) == head + rest
            assert await a.backend.pending_writes(older_than=0) == []

    asyncio.run(scenario())


def test_two_requests_on_one_session_cannot_both_write(
    tmp_path: Path, settings: S3Settings
) -> None:
    """The session's lease: a chunk arriving while another is being written, on either node,
    is refused; once the first is done the session goes on."""
    first = os.urandom(MiB)
    started = asyncio.Event()
    go = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield first[: MiB // 2]
        started.set()
        await go.wait()
        yield first[MiB // 2 :]

    async def scenario() -> None:
        async with node(tmp_path, settings, "a") as a, node(tmp_path, settings, "b") as b:
            state = await a.repo.start_upload("app")
            writing = asyncio.create_task(a.repo.append_upload(state, slow(), len(first), 0))
            await started.wait()
            for other in (a, b):
                with pytest.raises(RegistryError) as err:
                    await other.repo.append_upload(state, body(b"x"), 1, 0)
                assert err.value.code == "BLOB_UPLOAD_INVALID"
            go.set()
            done = await writing
            assert done.offset == MiB
            done = await b.repo.append_upload(done, body(b"tail"), 4, MiB)
            await b.repo.finish_upload(done, digest_of(first + b"tail"))
            assert await stored(a, digest_of(first + b"tail")) == first + b"tail"

    asyncio.run(scenario())


def test_purge_aborts_multipart_uploads_of_dead_sessions(
    tmp_path: Path, settings: S3Settings
) -> None:
    """A session abandoned past the session lifetime: the purge removes its row, its objects
    and its multipart upload; a fresh session's stay."""
    from sqlalchemy import update

    from portway.db.schema import uploads

    async def scenario() -> None:
        async with node(tmp_path, settings, "a") as a:
            old = await a.repo.start_upload("app")
            await a.repo.append_upload(old, body(os.urandom(6 * MiB + 1)), None)
            hour_ago = time.time() - 3600
            with a.meta.engine.begin() as conn:
                conn.execute(
                    update(uploads).where(uploads.c.id == old.id).values(
                        created=hour_ago, updated=hour_ago
                    )
                )
            # a multipart upload whose session row is already gone (a node died between)
            orphan = await a.backend.begin_parts("uploads/dead/data")
            await a.backend.put_part("uploads/dead/data", orphan, 1, b"z")
            await asyncio.sleep(2.5)
            fresh = await a.repo.start_upload("app")
            fresh = await a.repo.append_upload(fresh, body(os.urandom(7 * MiB)), None)
            assert await a.repo.purge_uploads(2) == 1
            assert await a.blobs.purge_leftovers(2) == 1
            pending = await a.backend.pending_writes(older_than=0)
            assert [p.key for p in pending] == [f"uploads/{fresh.id}/data"]
            assert await leftovers(a, old.id) == set()
            state = await a.repo.upload_state("app", fresh.id)
            assert state == UploadState(fresh.id, "app", 7 * MiB)

    asyncio.run(scenario())
