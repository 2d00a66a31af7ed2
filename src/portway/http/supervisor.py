"""The parent of several workers: starts them, replaces one that dies, stops them all.

A worker that dies (killed, crashed) is replaced after a back-off that doubles with each death
that came soon after the worker started; the others keep serving from the same listening
sockets meanwhile. A worker slot whose workers keep dying right after they start means the
server cannot run (a broken data directory, a bad disk): after `GIVE_UP_AFTER` such deaths in
a row the parent stops every worker and exits non-zero, so that a service manager sees the
failure. SIGTERM or SIGINT stops every worker and exits 0 (ADR 9).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

from portway.config import Settings

log = logging.getLogger("portway.server")

STABLE_AFTER = 30.0  # seconds: a worker that dies sooner after its start died "fast"
GIVE_UP_AFTER = 5  # fast deaths in a row of one slot's workers stop the server
BACKOFF_BASE, BACKOFF_MAX = 0.25, 30.0  # seconds before a replacement starts
STOP_GRACE = 90.0  # seconds workers get to finish their requests on SIGTERM
EXIT_WORKERS_FAILING = 1

WorkerTarget = Callable[[Settings, Sequence[tuple[int, socket.socket]]], None]


@dataclass
class _Slot:
    number: int
    proc: BaseProcess | None = None
    started: float = 0.0
    fast_deaths: int = 0
    restart_at: float | None = None


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        sockets: Sequence[tuple[int, socket.socket]],
        workers: int,
        target: WorkerTarget,
    ) -> None:
        self._settings = settings
        self._sockets = list(sockets)
        self._target = target
        self._spawn = multiprocessing.get_context("spawn")
        self._slots = [_Slot(n) for n in range(workers)]
        self._stopping = False
        self._status = 0

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for slot in self._slots:
            self._start(slot)
        while not self._stopping:
            sentinels = [s.proc.sentinel for s in self._slots if s.proc is not None]
            wait(sentinels, timeout=self._next_wake())
            now = time.monotonic()
            for slot in self._slots:
                if self._stopping:
                    break
                if slot.proc is not None and not slot.proc.is_alive():
                    self._lost(slot, now)
                elif slot.proc is None and slot.restart_at is not None and slot.restart_at <= now:
                    self._start(slot)
        self._stop_all()
        for _, sock in self._sockets:
            sock.close()
        return self._status

    def _next_wake(self) -> float:
        pending = [s.restart_at for s in self._slots if s.restart_at is not None]
        if not pending:
            return 1.0
        return max(0.0, min(1.0, min(pending) - time.monotonic()))

    def _start(self, slot: _Slot) -> None:
        proc = self._spawn.Process(
            target=self._target, args=(self._settings, self._sockets), daemon=False
        )
        proc.start()
        slot.proc, slot.started, slot.restart_at = proc, time.monotonic(), None

    def _lost(self, slot: _Slot, now: float) -> None:
        assert slot.proc is not None
        pid, code = slot.proc.pid, slot.proc.exitcode
        slot.proc.close()
        slot.proc = None
        lived = now - slot.started
        slot.fast_deaths = slot.fast_deaths + 1 if lived < STABLE_AFTER else 0
        if slot.fast_deaths >= GIVE_UP_AFTER:
            log.error(
                "worker %s %s %.1fs after it started; %d workers in a row died within %.0fs "
                "of starting: giving up, stopping every worker",
                pid,
                describe_exit(code),
                lived,
                slot.fast_deaths,
                STABLE_AFTER,
            )
            self._status = EXIT_WORKERS_FAILING
            self._begin_stop()
            return
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2**slot.fast_deaths)
        log.error(
            "worker %s %s after %.1fs; starting a replacement in %.2gs",
            pid,
            describe_exit(code),
            lived,
            delay,
        )
        slot.restart_at = now + delay

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self._stopping:
            log.info("%s: stopping every worker", signal.Signals(signum).name)
        self._begin_stop()

    def _begin_stop(self) -> None:
        self._stopping = True
        for slot in self._slots:
            slot.restart_at = None
            if slot.proc is not None and slot.proc.is_alive() and slot.proc.pid:
                os.kill(slot.proc.pid, signal.SIGTERM)

    def _stop_all(self) -> None:
        self._begin_stop()  # again: a worker started while the signal arrived
        deadline = time.monotonic() + STOP_GRACE
        for slot in self._slots:
            if slot.proc is None:
                continue
            slot.proc.join(max(0.0, deadline - time.monotonic()))
            if slot.proc.is_alive():
                log.error("worker %s did not stop in %.0fs; killing it", slot.proc.pid, STOP_GRACE)
                slot.proc.kill()
                slot.proc.join()
