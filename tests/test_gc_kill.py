"""A `portway gc` process SIGKILLed at several points of its pass (links half deleted, blobs
marked `deleting`, some blobs gone), then passes run again: `portway fsck` finds nothing
wrong, every kept image is complete, and all the garbage is gone in the end."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gc_support import AGED, HOLD, World, open_world
from portway.lifecycle.collector import Collector
from portway.lifecycle.fsck import fsck

GARBAGE = 400


def count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


LINKS = "SELECT count(*) FROM blob_links"
DELETING = "SELECT count(*) FROM blob_states WHERE state = 'deleting'"
GONE = "SELECT count(*) FROM blob_states WHERE state = 'gone'"


def kill_when(config: Path, ready: Callable[[], bool], timeout: float = 120) -> bool:
    """Start `portway gc`, SIGKILL it once `ready()`; False if it finished first."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "portway", "gc", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                return True
            time.sleep(0.005)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("point", ["links", "deleting", "gone"])
def test_a_killed_collector_loses_nothing(tmp_path: Path, point: str) -> None:
    data = tmp_path / "data"
    db = data / "portway.db"
    world: World = open_world(f"sqlite:///{db}", data)
    config = tmp_path / "portway.toml"
    config.write_text(
        f'[server]\ndata_dir = "{data}"\ngc_hold = 1\n\n'
        '[[repository]]\nname = "docker-hosted"\ntype = "hosted"\n'
    )

    async def setup() -> list[bytes]:
        kept = []
        for k in range(5):
            layers = [f"kept {k} {n}".encode() for n in range(3)]
            await world.push_image("app", f"v{k}", layers)
            kept += layers
        for k in range(GARBAGE):
            await world.push_blob("app", f"garbage {k}".encode() * 50)
        return kept

    kept = asyncio.run(setup())
    time.sleep(max(AGED, 1 + 1.0 + 0.2))  # the CLI's gc_hold is 1 s (+1 s margin)
    links = count(db, LINKS)
    ready = {
        "links": lambda: count(db, LINKS) < links and count(db, DELETING) == 0,
        "deleting": lambda: count(db, DELETING) > 0,
        "gone": lambda: count(db, GONE) > 0,
    }[point]
    killed = kill_when(config, ready)
    assert killed, f"the pass finished before it reached {point!r}"

    async def finish() -> None:
        collector = Collector(world.meta, world.blobs, HOLD, stale=0.0)  # resume at once
        for _ in range(3):
            await collector.run()
        report = await fsck(world.meta, world.blobs)
        assert report.clean, report
        for layer in kept:
            assert world.blob_there(layer)
        gone = [k for k in range(GARBAGE) if not world.blob_there(f"garbage {k}".encode() * 50)]
        assert len(gone) == GARBAGE
        assert count(db, DELETING) == 0
        assert count(db, LINKS) == links - GARBAGE

    try:
        asyncio.run(finish())
    finally:
        world.close()
