"""50 pushes of images sharing layers, several at once, into a real `portway serve` while
images are deleted and a garbage-collection pass runs every second, on SQLite and on
PostgreSQL: no push fails, every image that was not deleted is complete afterwards, and the
passes did delete garbage meanwhile (so they really ran against the pushes)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from portway.compose import Portway
from portway.config import load_settings
from portway.lifecycle.collector import Collector
from push_support import Registry, manifest_for, sha256
from support.server import PortwayServer

HOLD = 3
PUSHES = 50
PARALLEL = 8


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PortwayServer]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    if url is not None:
        from sqlalchemy import create_engine, text

        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.begin() as conn:  # the module's database may hold a previous test's rows
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
    srv = PortwayServer(tmp_path, server={"gc_hold": HOLD}, database_url=url).start()
    yield srv
    srv.stop()


def layer(name: str, size: int) -> bytes:
    return random.Random(name).randbytes(size)


BASE = layer("base", 64 * 1024)
MIDS = [layer(f"mid{k}", 32 * 1024) for k in range(4)]
CHURN = layer("churn", 24 * 1024)  # only in images that are deleted again


def image_of(i: int) -> tuple[str, str, bytes, list[bytes]]:
    """(image, tag, config, layers) of push `i`; every third one is deleted after its push."""
    doomed = i % 3 == 0
    layers = [BASE, MIDS[i % 4], layer(f"unique{i}", 16 * 1024)]
    if doomed:
        layers.append(CHURN)
    config = f'{{"push":{i}}}'.encode()
    return f"img{i % 5}", f"t{i}", config, layers


def push(reg: Registry, i: int, failures: list[str]) -> str | None:
    """Like docker: HEAD every blob, upload the missing ones (some time passes, as other
    layers go up), then PUT the manifest. Returns its digest, None if anything failed."""
    image, tag, config, layers = image_of(i)
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


def gc_loop(server: PortwayServer, stop: threading.Event, freed: list[int]) -> None:
    with Portway(load_settings(server.config_path)) as root:
        collector = Collector(root.meta, root.blobs, HOLD)
        while not stop.is_set():
            report = asyncio.run(collector.run())
            freed.append(report.bytes_freed)
            stop.wait(1.0)


def test_pushes_while_gc_runs_lose_nothing(server: PortwayServer) -> None:
    reg = Registry(f"{server.url}/repository/docker-hosted")
    failures: list[str] = []
    freed: list[int] = []
    stop = threading.Event()
    collector = threading.Thread(target=gc_loop, args=(server, stop, freed))
    started = time.monotonic()
    collector.start()
    try:

        def one(i: int) -> tuple[int, str | None]:
            digest = push(reg, i, failures)
            if digest is not None and i % 3 == 0:
                gone = reg.request("DELETE", reg.path(image_of(i)[0], f"manifests/{digest}"))
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
        image, tag, config, layers = image_of(i)
        got = reg.get_manifest(image, tag)
        assert got.status == 200 and got.header("Docker-Content-Digest") == digest, (i, got.status)
        for blob in [config, *layers]:
            status, hexdigest, size = reg.pull_blob(image, sha256(blob))
            assert (status, hexdigest, size) == (
                200,
                hashlib.sha256(blob).hexdigest(),
                len(blob),
            ), f"push {i}: blob {sha256(blob)} of {image}"
    assert time.monotonic() - started < 60
