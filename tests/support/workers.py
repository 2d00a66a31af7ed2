"""Watching a server's worker processes from its log: which workers reported listening (in
order), in the whole log or in this run only (since the server's last start); killing one;
clients pulling an image again and again meanwhile (`pull_loop`)."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from support.process import START_MARK
from support.server import PortwayServer

if TYPE_CHECKING:
    from push_support import Registry

LISTENING_RE = re.compile(r"portway\.server\[(\d+)\]: worker \d+ listening on")


def listening(server: PortwayServer, *, this_run: bool = False) -> list[int]:
    """Worker pids in the order they reported listening; with `this_run`, only those of the
    server's last start (the log keeps every run)."""
    log = server.log()
    if this_run:
        log = log.rpartition(START_MARK)[2]
    return [int(p) for p in LISTENING_RE.findall(log)]


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> float:
    """Poll `check` until it holds; returns how long it took, fails after `timeout` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def alive(pid: int) -> bool:
    """The process exists and is no zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_worker(pid: int) -> float:
    """SIGKILL `pid` and wait until it is gone (its sockets closed); returns that moment."""
    os.kill(pid, signal.SIGKILL)
    wait_for(f"worker {pid} to die", lambda: not alive(pid), 10)
    return time.monotonic()


@dataclass
class Outcome:
    """One request of `pull_loop`: when it started and ended, and what went wrong (None: it
    was answered in full and right)."""

    started: float
    ended: float
    error: str | None


def pull_loop(
    reg: Registry,
    image: str,
    manifest: bytes,
    blob: bytes,
    stop: threading.Event,
    out: list[Outcome],
    *,
    ping: bool = False,
) -> None:
    """Until `stop`: the manifest (tag v1) and the layer pulled and checked again and again,
    each request on a new connection (`ping`: /v2/ first each time), into `out`."""
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    steps = (("v2",) if ping else ()) + ("manifest", "blob")
    while not stop.is_set():
        for what in steps:
            started, error = time.monotonic(), None
            try:
                if what == "v2":
                    status = reg.request("GET", "/v2/").status
                    error = None if status == 200 else f"/v2/: {status}"
                elif what == "manifest":
                    reply = reg.get_manifest(image, "v1")
                    if reply.status != 200 or reply.body != manifest:
                        error = f"manifest: {reply.status}"
                else:
                    status, hexdigest, length = reg.pull_blob(image, digest)
                    if (status, length, f"sha256:{hexdigest}") != (200, len(blob), digest):
                        error = f"blob: {status} {length}"
            except (OSError, http.client.HTTPException) as exc:
                error = f"{what}: {exc!r}"
            out.append(Outcome(started, time.monotonic(), error))
