"""Nothing is held whole in memory: 2 GiB pushed (monolithic and chunked) and pulled back
while every server process stays under 150 MB of RSS.

The client generates the blob block by block (see `BigBlob`) and hashes what it sends or
receives; the blob never exists in the test's memory or disk. Figures are printed (`-s`).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Iterator

import pytest

from push_support import BigBlob, Hashing, MiB, Registry, RssSampler, group_members
from support.server import PortwayServer

pytestmark = pytest.mark.slow

GiB = 1024 * MiB
BLOB_SIZE = 2 * GiB
CHUNK_SIZE = 512 * MiB
RSS_LIMIT = 150 * 1000 * 1000  # "150 MB"
IMAGE = "memory/big"


@pytest.fixture
def server(portway_factory: Callable[..., PortwayServer]) -> Iterator[PortwayServer]:
    srv = portway_factory(workers=2)
    yield srv
    srv.stop()
    shutil.rmtree(srv.data_dir, ignore_errors=True)  # gigabytes: do not leave them in /tmp


def _server_pids(server: PortwayServer) -> list[int]:
    assert server.pid is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = group_members(server.pid)
        if len(pids) >= 3:  # parent + 2 workers (+ multiprocessing's resource tracker)
            return pids
        time.sleep(0.05)
    raise AssertionError(f"server processes: {group_members(server.pid)}")


def _report(what: str, seconds: float, sampler: RssSampler) -> None:
    peaks = ", ".join(f"{pid}: {rss / 1e6:.1f} MB" for pid, rss in sorted(sampler.peak.items()))
    print(
        f"\n{what}: {BLOB_SIZE / MiB / seconds:.0f} MiB/s ({seconds:.1f} s), "
        f"{sampler.samples} RSS samples, peaks {peaks}"
    )


def _check_rss(what: str, sampler: RssSampler) -> None:
    assert sampler.samples >= 5, f"{what}: too few RSS samples"
    over = {pid: rss for pid, rss in sampler.peak.items() if rss >= RSS_LIMIT}
    assert not over, f"{what}: RSS over {RSS_LIMIT / 1e6:.0f} MB: {over}"


def test_two_gib_blob_push_and_pull_in_bounded_memory(server: PortwayServer) -> None:
    reg = Registry(server.repository_url(), timeout=300)
    pids = _server_pids(server)

    # 1. monolithic POST ?digest=: the digest must be known first, so hash a dry run
    mono = BigBlob(BLOB_SIZE, seed=1)
    mono_digest = mono.digest()
    with RssSampler(pids) as sampler:
        started = time.monotonic()
        reply = reg.upload_monolithic(IMAGE, mono_digest, mono.chunks(), BLOB_SIZE)
        elapsed = time.monotonic() - started
    assert reply.status == 201, (reply.status, reply.body[:300])
    assert reply.header("Docker-Content-Digest") == mono_digest
    _report("monolithic push", elapsed, sampler)
    _check_rss("monolithic push", sampler)
    head = reg.head_blob(IMAGE, mono_digest)
    assert head.status == 200 and head.header("Content-Length") == str(BLOB_SIZE)

    # 2. chunked: 4 PATCHes of 512 MiB (each on a new connection, so likely both workers),
    #    hashed as they are sent, then the closing PUT
    chunked = BigBlob(BLOB_SIZE, seed=2)
    hasher = hashlib.sha256()
    with RssSampler(pids) as sampler:
        started = time.monotonic()
        location = reg.start_upload(IMAGE)
        for offset in range(0, BLOB_SIZE, CHUNK_SIZE):
            body = Hashing(chunked.chunks(offset, CHUNK_SIZE), hasher)
            location, patch = reg.patch(location, offset, body, CHUNK_SIZE)
            assert patch.status == 202, (offset, patch.status, patch.body[:300])
            assert patch.header("Range") == f"0-{offset + CHUNK_SIZE - 1}"
        chunked_digest = f"sha256:{hasher.hexdigest()}"
        reply = reg.finish_upload(location, chunked_digest)
        elapsed = time.monotonic() - started
    assert reply.status == 201, (reply.status, reply.body[:300])
    _report("chunked push (4 x 512 MiB)", elapsed, sampler)
    _check_rss("chunked push", sampler)
    head = reg.head_blob(IMAGE, chunked_digest)
    assert head.status == 200 and head.header("Content-Length") == str(BLOB_SIZE)

    # 3. pull it back, hashing as it streams
    with RssSampler(pids) as sampler:
        started = time.monotonic()
        status, hexdigest, length = reg.pull_blob(IMAGE, mono_digest)
        elapsed = time.monotonic() - started
    assert (status, length) == (200, BLOB_SIZE)
    assert f"sha256:{hexdigest}" == mono_digest
    _report("pull", elapsed, sampler)
    _check_rss("pull", sampler)
