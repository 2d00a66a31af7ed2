"""The cost of finishing an upload on another node: the closing node re-reads and hashes
what it did not see. On one Ceph RGW (tests/support/ceph.py), with two nodes sharing one
SQLite metadata file and the bucket:

    .venv/bin/python bench/s3_rehash.py [--mib 100] [--repeat 3]

For each round: node A stores the whole upload (one PATCH), then either A closes it (its
running sha256) or B closes it (re-hash of the completed object). Prints the closing PUT's
time both ways and the difference per 100 MiB; also the push MB/s into the session and the
MB/s of reading the blob back (what a streamed blob GET reads from the store).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from tests.support.ceph import CephRGW  # noqa: E402

from portway.config import RepositoryConfig  # noqa: E402
from portway.db.store import MetadataStore  # noqa: E402
from portway.oci.digest import Digest  # noqa: E402
from portway.repos.hosted import HostedRepository  # noqa: E402
from portway.storage.blobstore import BlobStore  # noqa: E402
from portway.storage.fsspool import LocalSpool  # noqa: E402
from portway.storage.part_uploads import PartUploads  # noqa: E402
from portway.storage.s3 import MiB, S3Backend, S3Settings  # noqa: E402


async def body(data: bytes) -> AsyncIterator[bytes]:
    for at in range(0, len(data), MiB):
        yield data[at : at + MiB]


async def rounds(root: Path, settings: S3Settings, mib: int, repeat: int) -> None:
    meta_a = MetadataStore.open_sqlite(root / "portway.db")
    meta_b = MetadataStore.open_sqlite(root / "portway.db")
    nodes = []
    for name, meta in (("a", meta_a), ("b", meta_b)):
        backend = await S3Backend.open(settings)
        sessions = PartUploads(backend, meta, BlobStore.blob_key, settings.part_size)
        blobs = BlobStore(
            backend, sessions=sessions, spool=LocalSpool(root / name / "s", root / name / "l")
        )
        cfg = RepositoryConfig(name="docker-hosted", type="hosted")
        repo_id = meta.ensure_repository(cfg.name, cfg.type)
        nodes.append((backend, HostedRepository(cfg, repo_id, meta, blobs)))
    (_, a), (_, b) = nodes
    times: dict[str, list[float]] = {"same node": [], "other node": []}
    push: list[float] = []
    pull: list[float] = []
    for i in range(repeat):
        for label, closer in (("same node", a), ("other node", b)):
            data = os.urandom(mib * MiB)
            digest = Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())
            state = await a.start_upload(f"bench{i}")
            started = time.perf_counter()
            state = await a.append_upload(state, body(data), len(data))
            push.append(mib / (time.perf_counter() - started))
            started = time.perf_counter()
            await closer.finish_upload(state, digest)
            times[label].append(time.perf_counter() - started)
            started = time.perf_counter()
            got = 0
            async for chunk in closer.blobs.read(digest):
                got += len(chunk)
            assert got == len(data)
            pull.append(mib / (time.perf_counter() - started))
    same, other = statistics.median(times["same node"]), statistics.median(times["other node"])
    print(f"{mib} MiB upload, {repeat} rounds, part_size {settings.part_size // MiB} MiB")
    print(f"  push into the session: {statistics.median(push):.0f} MB/s (median)")
    print(f"  blob read back from the store: {statistics.median(pull):.0f} MB/s (median)")
    print(f"  closing PUT on the same node:  {same * 1000:.0f} ms (median)")
    print(f"  closing PUT on another node:   {other * 1000:.0f} ms (median)")
    print(f"  re-hash cost: {(other - same) * 1000 * 100 / mib:.0f} ms per 100 MiB")
    for backend, _ in nodes:
        await backend.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="portway-rehash-") as tmp:
        rgw = CephRGW(Path(tmp) / "ceph").start()
        try:
            bucket = rgw.make_bucket(f"rehash-{uuid.uuid4().hex[:8]}")
            settings = S3Settings(
                bucket=bucket, endpoint=rgw.endpoint, region=rgw.region,
                access_key=rgw.access_key, secret_key=rgw.secret_key, part_size=8 * MiB,
            )
            asyncio.run(rounds(Path(tmp), settings, args.mib, args.repeat))
        finally:
            rgw.stop()


if __name__ == "__main__":
    main()
