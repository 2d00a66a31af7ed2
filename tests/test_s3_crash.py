"""Crash safety on S3: SIGKILL of the server during 20 concurrent chunked pushes. After the
restart every acknowledged push (manifest 201) is whole, no blob object in the bucket differs
from its content address, and the upload purge leaves no session object or multipart upload.
And memory: a 2 GiB push to S3 keeps every server process under 150 MB resident."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests

from portway.compose import Portway
from portway.config import load_settings
from portway.repos.hosted import HostedRepository
from s3_support import MiB, bucket_keys, object_sha256, process_tree, rss_kib, s3_server
from support.ceph import CephRGW

PUSHERS = 20
RSS_LIMIT = 150 * 1000 * 1000  # bytes: "150 MB" (VmRSS counts KiB, so 146,484 KiB)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def bucket(ceph_rgw: CephRGW) -> str:
    return ceph_rgw.make_bucket(f"crash-{uuid.uuid4().hex[:8]}")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_image(base: str, image: str, tag: str, seed: int) -> str:
    """Config (monolithic POST), one layer in three PATCHes, manifest; returns its digest.
    Raises on any refusal or cut connection."""
    rng = random.Random(seed)
    layer = rng.randbytes(rng.randint(6 * MiB, 12 * MiB))
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    s = requests.Session()
    url = f"{base}/v2/{image}/blobs/uploads/"
    r = s.post(url, params={"digest": sha(config)}, data=config, timeout=60)
    assert r.status_code == 201, r.text
    r = s.post(url, timeout=60)
    assert r.status_code == 202, r.text
    location = urljoin(base, r.headers["Location"])
    third = len(layer) // 3
    for start in (0, third, 2 * third):
        end = len(layer) if start == 2 * third else start + third
        r = s.patch(
            location, data=layer[start:end], timeout=60,
            headers={"Content-Range": f"{start}-{end - 1}"},
        )
        assert r.status_code == 202, r.text
        location = urljoin(base, r.headers["Location"])
    r = s.put(location, params={"digest": sha(layer)}, timeout=60)
    assert r.status_code == 201, r.text
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha(layer), "size": len(layer)}],
    }).encode()
    r = s.put(f"{base}/v2/{image}/manifests/{tag}", data=manifest, timeout=60,
              headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, r.text
    return sha(manifest)


def kill_with_uploads_open(
    pid: int | None, rgw: CephRGW, bucket: str, prefix: str, timeout: float = 60
) -> list[str]:
    """Freeze the server's process group (SIGSTOP) until the bucket holds what an open upload
    leaves (a tail or a multipart upload); thaw and try again while it holds none. Returns
    those keys, with the group still frozen, for the caller's SIGKILL. Pushes finish in
    step, so right after the first round every upload may still be before its first PATCH."""
    assert pid is not None
    deadline = time.monotonic() + timeout
    while True:
        os.killpg(pid, signal.SIGSTOP)
        open_uploads = [k for k in bucket_keys(rgw, bucket, prefix + "/") if "/blobs/" not in k]
        if open_uploads or time.monotonic() > deadline:
            return open_uploads
        os.killpg(pid, signal.SIGCONT)
        time.sleep(random.uniform(0.05, 0.3))


def test_sigkill_during_concurrent_pushes_loses_nothing_acknowledged(
    tmp_path: Path, ceph_rgw: CephRGW, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = s3_server(tmp_path, ceph_rgw, bucket, workers=2).start(timeout=60)
    base = f"{node.url}/repository/docker-hosted"
    prefix = node.tables["storage"]["prefix"]
    acked: dict[str, str] = {}  # "image:tag" -> manifest digest
    lock = threading.Lock()
    stop = threading.Event()

    def pusher(n: int) -> None:
        for round_ in range(50):
            if stop.is_set():
                return
            image, tag = f"crash/p{n}", f"r{round_}"
            try:
                digest = push_image(base, image, tag, seed=n * 1000 + round_)
            except (requests.RequestException, AssertionError):
                return  # the server died under this push: not acknowledged
            with lock:
                acked[f"{image}:{tag}"] = digest

    with ThreadPoolExecutor(PUSHERS) as pool:
        for n in range(PUSHERS):
            pool.submit(pusher, n)
        deadline = time.monotonic() + 120
        while len(acked) < PUSHERS and time.monotonic() < deadline:
            time.sleep(0.2)
        open_uploads = kill_with_uploads_open(node.pid, ceph_rgw, bucket, prefix)
        node.kill()  # SIGKILL, every worker at once, pushes in flight
        stop.set()
    assert len(acked) >= PUSHERS, f"only {len(acked)} pushes done before the kill"
    assert open_uploads, "the kill interrupted no upload: the test proves nothing"

    node.start(timeout=60)
    try:
        for ref, digest in acked.items():
            image, tag = ref.split(":")
            r = requests.get(f"{base}/v2/{image}/manifests/{tag}",
                             headers={"Accept": OCI_MANIFEST}, timeout=30)
            assert r.status_code == 200 and sha(r.content) == digest, ref
            for entry in [json.loads(r.content)["config"], *json.loads(r.content)["layers"]]:
                blob = requests.get(f"{base}/v2/{image}/blobs/{entry['digest']}", timeout=60)
                assert blob.status_code == 200 and sha(blob.content) == entry["digest"], ref
        # no partial blob anywhere: every object at a content address holds that content
        blobs = bucket_keys(ceph_rgw, bucket, f"{prefix}/blobs/")
        assert len(blobs) >= 2 * len(acked)
        for key in blobs:
            assert object_sha256(ceph_rgw, bucket, key) == key.rsplit("/", 1)[1], key
    finally:
        node.stop()

    # What the interrupted pushes left is the purge's: sessions, tails, multipart uploads.
    left = [k for k in bucket_keys(ceph_rgw, bucket, prefix + "/") if "/blobs/" not in k]
    assert set(open_uploads) <= set(left), "the restart removed what the purge should"
    time.sleep(1.1)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ceph_rgw.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ceph_rgw.secret_key)
    with Portway(load_settings(node.config_path)) as root:

        async def purge() -> None:
            for repo in root.registry.current.repos.values():
                if isinstance(repo, HostedRepository):
                    await repo.purge_uploads(1)
            await root.blobs.purge_leftovers(1)
            await root.blobs.aclose()

        asyncio.run(purge())
    left = [k for k in bucket_keys(ceph_rgw, bucket, prefix + "/") if "/blobs/" not in k]
    assert left == []


def test_a_2_gib_push_to_s3_keeps_each_process_under_150_mb(
    tmp_path: Path, ceph_rgw: CephRGW, bucket: str
) -> None:
    node = s3_server(tmp_path, ceph_rgw, bucket, part_size=5 * MiB).start(timeout=60)
    base = f"{node.url}/repository/docker-hosted"
    block = os.urandom(MiB)
    total = 2048 * MiB
    hasher = hashlib.sha256()
    peak: dict[int, int] = {}
    done = threading.Event()

    def body() -> Iterator[bytes]:
        for i in range(total // MiB):
            piece = i.to_bytes(8, "big") + block[8:]  # no two MiB alike
            hasher.update(piece)
            yield piece

    def sample() -> None:
        assert node.pid is not None
        while not done.is_set():
            for pid in process_tree(node.pid):
                with contextlib.suppress(OSError):
                    peak[pid] = max(peak.get(pid, 0), rss_kib(pid))
            time.sleep(0.1)

    watcher = threading.Thread(target=sample)
    try:
        small = b"warm the S3 client up"
        r = requests.post(f"{base}/v2/big/blobs/uploads/", params={"digest": sha(small)},
                          data=small, timeout=30)
        assert r.status_code == 201, r.text
        assert node.pid is not None
        idle = {pid: rss_kib(pid) for pid in process_tree(node.pid)}
        r = requests.post(f"{base}/v2/big/blobs/uploads/", timeout=30)
        assert r.status_code == 202
        watcher.start()
        started = time.monotonic()
        r = requests.patch(urljoin(base, r.headers["Location"]), data=body(), timeout=300)
        assert r.status_code == 202, r.text
        closing = urljoin(base, r.headers["Location"])
        r = requests.put(closing, params={"digest": "sha256:" + hasher.hexdigest()}, timeout=300)
        assert r.status_code == 201, r.text
        seconds = time.monotonic() - started
        done.set()
        watcher.join()
        head = requests.head(f"{base}/v2/big/blobs/sha256:{hasher.hexdigest()}", timeout=30)
        assert int(head.headers["Content-Length"]) == total
        print(f"2 GiB push to S3: {total / MiB / seconds:.0f} MB/s, RSS (KiB) idle {idle}, "
              f"peak {peak}")
        assert peak, "no server process was measured"
        over = {pid: kib for pid, kib in peak.items() if kib * 1024 >= RSS_LIMIT}
        assert not over, (
            f"RSS at or over {RSS_LIMIT / 1e6:.0f} MB ({RSS_LIMIT // 1024} KiB) during the push: "
            f"peak KiB by pid {over}"
        )
    finally:
        done.set()
        node.stop()
        key = f"{node.tables['storage']['prefix']}/blobs/sha256/"
        for stored in bucket_keys(ceph_rgw, bucket, key):
            ceph_rgw.client().delete_object(Bucket=bucket, Key=stored)  # give RGW its RAM back
