"""The parent of several workers: starts them, replaces one that dies, stops them all.

A worker that dies (killed, crashed) is replaced after a back-off that doubles with each death
that came soon after the worker started; the others keep serving from the same listening
sockets meanwhile. A worker slot whose workers keep dying right after they start means the
server cannot run (a broken data directory, a bad disk): after `GIVE_UP_AFTER` such deaths in
a row the parent stops every worker and exits non-zero, so that a service manager sees the
failure. SIGTERM or SIGINT stops every worker and exits 0 (ADR 9).

A worker drains before it stops (drain.py), so one that exits with status 0 was stopped on
purpose (someone sent it SIGTERM): it is replaced at once and not counted as a death. SIGUSR2
restarts the workers one at a time: a new worker starts and reports that it accepts, then the
old one drains and exits; the server never serves with fewer workers than configured (ADR 18).

The parent also holds the connectors' sockets: it watches the definitions, binds a connector
made through the API (or added to the file, at SIGHUP), closes a removed one, and tells every
worker over its control socket, handing new sockets over as descriptors (ADR 28).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from portway.config import ConnectorConfig, Settings
from portway.http import reload
from portway.http.live_connectors import POLL, Watch, send

log = logging.getLogger("portway.server")

STABLE_AFTER = 30.0  # seconds: a worker that dies sooner after its start died "fast"
GIVE_UP_AFTER = 5  # fast deaths in a row of one slot's workers stop the server
BACKOFF_BASE, BACKOFF_MAX = 0.25, 30.0  # seconds before a replacement starts
STOP_MARGIN = 15.0  # seconds past drain_timeout before a worker that has not exited is killed
READY_TIMEOUT = 120.0  # seconds a rolling restart waits for a new worker to accept
EXIT_WORKERS_FAILING = 1

# (settings, listening sockets (None: the main listener, else the connector each serves),
# pipe the worker sends its pid on once it accepts, the worker's end of its control socket)
Sockets = Sequence[tuple[ConnectorConfig | None, socket.socket]]
WorkerTarget = Callable[[Settings, Sockets, Connection, socket.socket], None]


@dataclass
class _Slot:
    number: int
    proc: BaseProcess | None = None
    ready: Connection | None = None  # readable once the worker accepts
    control: socket.socket | None = None  # connector changes go to the worker through it
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
        sockets: Sockets,
        workers: int,
        target: WorkerTarget,
        watch: Watch | None = None,
    ) -> None:
        self._settings = settings
        self._sockets = list(sockets)  # the main listener's
        self._watch = watch  # the connectors' (their sockets are in its book)
        self._target = target
        self._spawn = multiprocessing.get_context("spawn")
        self._slots = [_Slot(n) for n in range(workers)]
        self._stopping = False
        self._roll_requested = False
        self._reload_requested = False
        self._retiring: list[BaseProcess] = []  # old workers draining in a rolling restart
        self._status = 0
        self._grace = settings.server.drain_timeout + STOP_MARGIN

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGUSR2, self._on_roll)
        signal.signal(signal.SIGHUP, self._on_hup)
        self._reload_requested = reload.held()  # one that came while the server started
        for slot in self._slots:
            self._start(slot)
        while not self._stopping:
            if self._roll_requested:
                self._roll()
                continue
            if self._reload_requested:
                self._reload()
            self._connectors()
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
        if self._watch is not None:
            for listen in list(self._watch.book.held):
                self._watch.book.release(listen)
        return self._status

    def _next_wake(self) -> float:
        longest = POLL if self._watch is not None else 1.0
        pending = [s.restart_at for s in self._slots if s.restart_at is not None]
        if not pending:
            return longest
        return max(0.0, min(longest, min(pending) - time.monotonic()))

    def _connectors(self) -> None:
        """Bind or close connectors whose definitions changed; tell every worker."""
        if self._watch is None:
            return
        changes = self._watch.poll()
        if changes is None:
            return
        for slot in self._slots:
            if slot.control is not None and slot.proc is not None:
                send(slot.control, changes)
        for listen in changes.closed:  # the workers closed theirs (or will, reading the message)
            self._watch.book.release(listen)

    def _all_sockets(self) -> Sockets:
        held = self._watch.book.pairs() if self._watch is not None else []
        return [*self._sockets, *held]

    def _spawn_worker(self) -> tuple[BaseProcess, Connection, socket.socket]:
        reader, writer = self._spawn.Pipe(duplex=False)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.settimeout(1.0)  # a worker that does not read its messages is not waited for
        proc = self._spawn.Process(
            target=self._target,
            args=(self._settings, self._all_sockets(), writer, theirs),
            daemon=False,
        )
        # The worker starts with SIGHUP blocked (the mask survives exec): one sent while its
        # interpreter starts waits until it is held (reload.hold_signal), and does not kill it.
        with reload.sighup_blocked():
            proc.start()
        writer.close()
        theirs.close()
        return proc, reader, ours

    def _start(self, slot: _Slot) -> None:
        if slot.ready is not None:
            slot.ready.close()
        if slot.control is not None:
            slot.control.close()
        slot.proc, slot.ready, slot.control = self._spawn_worker()
        slot.started, slot.restart_at = time.monotonic(), None

    def _lost(self, slot: _Slot, now: float) -> None:
        assert slot.proc is not None
        pid, code = slot.proc.pid, slot.proc.exitcode
        slot.proc.close()
        slot.proc = None
        lived = now - slot.started
        if code == 0:
            log.info("worker %s drained and stopped; starting a replacement", pid)
            slot.fast_deaths, slot.restart_at = 0, now
            return
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

    def _on_hup(self, _signum: int, _frame: Any) -> None:
        self._reload_requested = True

    def _reload(self) -> None:
        """SIGHUP: workers started from now on get the file's new settings; each running
        worker reads the file itself (reload.py)."""
        self._reload_requested = False
        path = reload.config_file()
        got = reload.read(path, self._settings) if path is not None else None
        if got is not None:
            self._settings = got[0]
            reload.set_log_level(self._settings)
            if self._watch is not None:  # the file's [[connector]] tables
                self._watch.source.set_file(self._settings)
                self._watch.force()
        for slot in self._slots:
            if slot.proc is not None and slot.proc.pid is not None and slot.proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.proc.pid, signal.SIGHUP)

    def _on_roll(self, _signum: int, _frame: Any) -> None:
        self._roll_requested = True

    def _roll(self) -> None:
        """Replace each worker in turn: start the new one, wait until it accepts, then let the
        old one drain and exit."""
        self._roll_requested = False
        log.info("SIGUSR2: restarting the %d workers one at a time", len(self._slots))
        for slot in self._slots:
            if self._stopping:
                return
            proc, ready, control = self._spawn_worker()
            if not self._await_ready(proc, ready):
                if proc.is_alive():
                    proc.kill()
                proc.join()
                ready.close()
                control.close()
                if not self._stopping:
                    log.error(
                        "rolling restart: the new worker %s %s; the old workers keep serving",
                        proc.pid,
                        "did not start" if proc.exitcode is None else describe_exit(proc.exitcode),
                    )
                return
            old, old_ready, old_control = slot.proc, slot.ready, slot.control
            slot.proc, slot.ready, slot.started = proc, ready, time.monotonic()
            slot.control = control
            slot.fast_deaths, slot.restart_at = 0, None
            if old_ready is not None:
                old_ready.close()
            if old_control is not None:
                old_control.close()
            if old is not None:
                self._retire(old)
        log.info("rolling restart done")

    def _await_ready(self, proc: BaseProcess, ready: Connection) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._stopping and time.monotonic() < deadline:
            wait([ready, proc.sentinel], timeout=1.0)
            try:
                if ready.poll():
                    ready.recv()
                    return True
            except (EOFError, OSError):
                return False  # the worker died before it accepted
            if not proc.is_alive():
                return False
        return False

    def _retire(self, proc: BaseProcess) -> None:
        """SIGTERM an old worker and wait until it has drained (or the grace has run out)."""
        self._retiring.append(proc)
        if proc.is_alive() and proc.pid:
            os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._grace
        while proc.is_alive() and not self._stopping and time.monotonic() < deadline:
            proc.join(0.5)
        if self._stopping:
            return  # _stop_all waits for it
        if proc.is_alive():
            log.error("worker %s did not stop in %.0fs; killing it", proc.pid, self._grace)
            proc.kill()
            proc.join()
        log.info("worker %s %s (rolling restart)", proc.pid, describe_exit(proc.exitcode))
        self._retiring.remove(proc)
        proc.close()

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
        for proc in self._retiring:
            if proc.is_alive() and proc.pid:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._grace
        procs = [s.proc for s in self._slots if s.proc is not None] + self._retiring
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker %s did not stop in %.0fs; killing it", proc.pid, self._grace)
                proc.kill()
                proc.join()
