"""Listening sockets and the accept loop that keeps a worker within its file descriptors.

The parent process binds every listener once (no SO_REUSEPORT) and hands the sockets to its
workers, which all accept from the same queue: a worker that dies takes only the connections
it had accepted with it, and a second server on the same port fails to bind (ADR 9).

Each worker accepts through a `ConnectionGate`: it holds at most `limit` connections (the
descriptor limit less what the worker already uses and some headroom for blob files and the
database). At the limit, or when `accept` runs out of descriptors all the same, the gate closes
the connections that are only waiting for a request (oldest first; those that never sent a
complete request before idle keep-alive ones) and, when there are none, stops accepting until
a connection closes. Either way it logs once per interval, not once per attempt.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from portway.config import split_listen

log = logging.getLogger("portway.server")

ACCEPT_BATCH = 16  # accepts per wake-up: leaves the rest of the queue to the other workers
RECLAIM_BATCH = 16  # waiting connections closed per wake-up at the limit
PAUSE_MIN, PAUSE_MAX = 0.05, 1.0  # seconds without accepting when nothing can be closed
REPORT_INTERVAL = 10.0  # seconds between two log lines about the limit
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class ListenError(Exception):
    """A listener could not be bound; the message names it and says why."""


def bind_listener(
    listen: str, backlog: int = 1024, *, reuse_port: bool = False, bind_only: bool = False
) -> list[socket.socket]:
    """Bound, listening sockets for `HOST:PORT` (every address the host resolves to).
    `reuse_port`: other processes that set it too may bind the same address (connectors of
    several nodes on one host); `bind_only`: bound, not listening (a check that the address
    is free, which never takes a connection)."""
    host, port = split_listen(listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {listen}: {exc.strerror}") from exc
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # one ephemeral port for every address
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            try:
                sock.bind(address)
            except OSError as exc:
                raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
            if not bind_only:
                sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit; returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, hard


def descriptors_in_use() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def connection_limit() -> int:
    """How many connections a worker may hold: the soft descriptor limit, less the
    descriptors open now (logs, database, listeners), less headroom for the files requests
    open (an eighth of the limit, at least 32)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    headroom = max(32, soft // 8)
    return max(8, soft - descriptors_in_use() - headroom)


@dataclass
class _Report:
    """Counts since the last log line about the limit."""

    closed: int = 0
    paused: int = 0
    out_of_descriptors: int = 0
    last: float = 0.0


class ConnectionGate:
    """Counts a worker's connections and decides, per wake-up of a listener, what to do."""

    def __init__(self, limit: int, waiting: Callable[[], list[Callable[[], None]]]) -> None:
        self.limit = limit
        self.open = 0
        self._waiting = waiting  # closers of the connections only waiting for a request
        self._sites: list[ListenerSite] = []
        self._paused = False
        self._pause = PAUSE_MIN
        self._resume_handle: asyncio.TimerHandle | None = None
        self._report = _Report()

    def add(self, site: ListenerSite) -> None:
        self._sites.append(site)
        if not self._paused:
            site.resume()

    def remove(self, site: ListenerSite) -> None:
        if site in self._sites:
            self._sites.remove(site)
        site.pause()

    def accepted(self) -> None:
        self.open += 1
        self._pause = PAUSE_MIN

    def closed(self) -> None:
        self.open -= 1
        if self._paused and self.open < self.limit:
            self._resume()

    def full(self) -> bool:
        return self.open >= self.limit

    def make_room(self, out_of_descriptors: bool = False) -> bool:
        """At the limit: close some waiting connections; True if any will free a descriptor.
        Otherwise stop accepting for a while (until a connection closes, at most PAUSE_MAX)."""
        if out_of_descriptors:
            self._report.out_of_descriptors += 1
        victims = self._waiting()[:RECLAIM_BATCH]
        for close in victims:
            close()
        self._report.closed += len(victims)
        if not victims:
            self._pause_accepting()
        self._maybe_report()
        return bool(victims)

    def _pause_accepting(self) -> None:
        self._report.paused += 1
        if self._paused:
            return
        self._paused = True
        for site in self._sites:
            site.pause()
        loop = asyncio.get_running_loop()
        self._resume_handle = loop.call_later(self._pause, self._resume)
        self._pause = min(PAUSE_MAX, self._pause * 2)

    def _resume(self) -> None:
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        if not self._paused:
            return
        self._paused = False
        for site in self._sites:
            site.resume()

    def _maybe_report(self) -> None:
        now = time.monotonic()
        report = self._report
        if now - report.last < REPORT_INTERVAL:
            return
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.warning(
            "connection limit reached (%d open, limit %d, file descriptor limit %d): "
            "closed %d connection(s) that were waiting for a request, paused accepting "
            "%d time(s), accept ran out of descriptors %d time(s) (next report in %.0fs "
            "at the earliest)",
            self.open,
            self.limit,
            soft,
            report.closed,
            report.paused,
            report.out_of_descriptors,
            REPORT_INTERVAL,
        )
        self._report = _Report(last=now)


class ListenerSite(web.BaseSite):
    """An aiohttp site on an already bound socket, accepting through a `ConnectionGate`."""

    __slots__ = ("_gate", "_handshake_timeout", "_name", "_reading", "_sock", "_starting")

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        gate: ConnectionGate,
        *,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 60.0,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._sock = sock
        self._gate = gate
        self._handshake_timeout = handshake_timeout
        self._reading = False
        self._starting: set[asyncio.Task[None]] = set()  # connections being set up
        host, port = sock.getsockname()[:2]
        self._name = f"{'https' if ssl_context else 'http'}://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def sock(self) -> socket.socket:
        return self._sock

    async def start(self) -> None:
        await super().start()
        self._sock.setblocking(False)
        self._gate.add(self)

    async def stop(self) -> None:
        self._runner._check_site(self)
        self._gate.remove(self)
        self._sock.close()
        self._runner._unreg_site(self)

    def pause(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._reading = False

    def resume(self) -> None:
        if not self._reading and self._sock.fileno() >= 0:
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept)
            self._reading = True

    def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            if self._gate.full():
                self._gate.make_room()
                return  # closed connections free their descriptors before the next wake-up
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._gate.make_room(out_of_descriptors=True)
                    return
                raise
            conn.setblocking(False)
            self._gate.accepted()
            task = loop.create_task(self._serve(conn))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _serve(self, conn: socket.socket) -> None:
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                server,
                conn,
                ssl=self._ssl_context,
                ssl_handshake_timeout=self._handshake_timeout if self._ssl_context else None,
            )
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            # never reached the request handler (a failed or slow TLS handshake)
            log.debug("connection closed before its first request: %s", exc)
            conn.close()
            self._gate.closed()
