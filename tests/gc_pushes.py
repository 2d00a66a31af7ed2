"""The scenario of tests/test_gc_concurrent.py and its cluster variant in
tests/test_cluster_state.py: PUSHES pushes of images sharing layers, PARALLEL at once, every
third image deleted again, while a garbage-collection pass runs every second."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from portway.compose import Portway
from portway.config import load_settings
from portway.lifecycle.collector import Collector
from push_support import Registry, manifest_for, sha256

HOLD = 3  # [server] gc_hold of the servers these pushes go to
PUSHES = 50
PARALLEL = 8


def layer(name: str, size: int) -> bytes:
    return random.Random(name).randbytes(size)


BASE = layer("base", 64 * 1024)
MIDS = [layer(f"mid{k}", 32 * 1024) for k in range(4)]
CHURN = layer("churn", 24 * 1024)  # only in images that are deleted again


def image_of(i: int, prefix: str = "") -> tuple[str, str, bytes, list[bytes]]:
    """(image, tag, config, layers) of push `i`; every third one is deleted after its push."""
    doomed = i % 3 == 0
    layers = [BASE, MIDS[i % 4], layer(f"unique{i}", 16 * 1024)]
    if doomed:
        layers.append(CHURN)
    config = f'{{"push":{i}}}'.encode()
    return f"{prefix}img{i % 5}", f"t{i}", config, layers


def push(reg: Registry, i: int, failures: list[str], prefix: str = "") -> str | None:
    """Like docker: HEAD every blob, upload the missing ones (some time passes, as other
    layers go up), then PUT the manifest. Returns its digest, None if anything failed."""
    image, tag, config, layers = image_of(i, prefix)
    rng = random.Random(i)
    missing = [b for b in [config, *layers] if reg.head_blob(image, sha256(b)).status != 200]
    time.sleep(rng.uniform(0, HOLD * 0.6))
    for blob in missing:
        reply = reg.upload_monolithic(image, sha256(blob), blob, len(blob))
        if reply.status != 201:
            failures.append(f"push {i}: blob upload {reply.status} {reply.body[:200]!r}")
            return None
    reply = reg.put_manifest(image, tag, manifest_for(config, layers))
    if reply.status != 201:
        failures.append(f"push {i}: manifest PUT {reply.status} {reply.body[:300]!r}")
        return None
    return reply.header("Docker-Content-Digest")


def gc_loop(config: Path, stop: threading.Event, freed: list[int]) -> None:
    with Portway(load_settings(config)) as root:
        collector = Collector(root.meta, root.blobs, HOLD)
        while not stop.is_set():
            report = asyncio.run(collector.run())
            freed.append(report.bytes_freed)
            stop.wait(1.0)


def pushes_while_gc_runs(reg: Registry, config: Path, prefix: str = "", budget: float = 60) -> None:
    """The scenario: PUSHES pushes, PARALLEL at once, through `reg`, every third image deleted
    again, while a pass runs every second on the stores `config` names."""
    failures: list[str] = []
    freed: list[int] = []
    stop = threading.Event()
    collector = threading.Thread(target=gc_loop, args=(config, stop, freed))
    started = time.monotonic()
    collector.start()
    try:

        def one(i: int) -> tuple[int, str | None]:
            digest = push(reg, i, failures, prefix)
            if digest is not None and i % 3 == 0:
                gone = reg.request(
                    "DELETE", reg.path(image_of(i, prefix)[0], f"manifests/{digest}")
                )
                if gone.status != 202:
                    failures.append(f"push {i}: DELETE {gone.status}")
            return i, digest

        with ThreadPoolExecutor(PARALLEL) as pool:
            results = list(pool.map(one, range(PUSHES)))
        # Keep collecting until the last deletions are old enough to go.
        time.sleep(HOLD + 2.5)
    finally:
        stop.set()
        collector.join(60)
    assert failures == []
    assert sum(freed) > 0, "no pass deleted anything: the test did not race the collector"
    for i, digest in results:
        if i % 3 == 0:
            continue
        image, tag, config_blob, layers = image_of(i, prefix)
        got = reg.get_manifest(image, tag)
        assert got.status == 200 and got.header("Docker-Content-Digest") == digest, (i, got.status)
        for blob in [config_blob, *layers]:
            status, hexdigest, size = reg.pull_blob(image, sha256(blob))
            assert (status, hexdigest, size) == (
                200,
                hashlib.sha256(blob).hexdigest(),
                len(blob),
            ), f"push {i}: blob {sha256(blob)} of {image}"
    assert time.monotonic() - started < budget
