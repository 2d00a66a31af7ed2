"""Watching a server's worker processes from its log: which workers reported listening (in
order), in the whole log or in this run only (since the server's last start)."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

from support.process import START_MARK
from support.server import PortwayServer

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
