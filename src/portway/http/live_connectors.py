"""Connectors that open and close while Portway runs (ADR 28).

The process that holds the listeners (the supervisor with `workers > 1`, else the one worker)
keeps a `ListenerBook`: the connector sockets it has bound, by `listen` address. It watches
the definition generation (the row repository changes bump too, ADR 24) and, when it moved,
reconciles the book with the connectors in service (the file's and the API's): binds the new
ones, closes the removed ones, and tells each worker through its control socket, passing new
sockets as descriptors (SCM_RIGHTS). Every worker then accepts from the same socket, as from
the listeners bound at start (ADR 9). An address that cannot be bound is retried every
`RETRY` seconds and shown as failed on the connector; nothing else stops.

A worker's `LiveSites` turns those messages into listener sites: a removed connector stops
accepting at once (its listening socket is closed in every process, so the port refuses new
connections) while the requests it had accepted finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from portway.config import ConnectorConfig, Settings
from portway.http.listeners import ConnectionGate, ListenError, ListenerSite, bind_listener
from portway.http.routing import RouteTable
from portway.repos.admin import RepositoryRefused

log = logging.getLogger("portway.server")

POLL = 0.2  # seconds between two looks at the generation (an indexed one-row read)
RETRY = 5.0  # seconds between two attempts to bind an address that was in use
MAX_FDS = 16  # sockets per connector (one per address its host resolves to)

ListenerState = tuple[str, str | None]  # ("listening" | "pending" | "failed", detail)


class ConnectorSource(Protocol):
    """Where the connectors in service come from (the composition root's definitions)."""

    def generation(self) -> object:
        """Moves when the connectors may have changed."""
        ...

    def connectors(self) -> tuple[ConnectorConfig, ...]: ...

    def set_file(self, settings: Settings) -> None: ...


def ssl_context(tls: Any) -> ssl.SSLContext | None:
    if tls is None:
        return None
    from portway.tls.context import build_ssl_context

    return build_ssl_context(tls)


def probe(config: ConnectorConfig, bind: bool, reuse_port: bool = False) -> None:
    """A new connector's checks on the node that takes the API call: its TLS files load, its
    address can be bound (bound without listening, then released at once: the listener
    holder binds it for good)."""
    try:
        ssl_context(config.tls)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise RepositoryRefused(f"tls: cannot load the certificate or key: {exc}") from None
    if not bind:
        return
    try:
        sockets = bind_listener(config.listen, reuse_port=reuse_port, bind_only=True)
    except ListenError as exc:
        raise RepositoryRefused(f"{exc} (on this node)", status=409) from None
    except OSError as exc:
        detail = f"cannot listen on {config.listen}: {exc.strerror or exc}"
        raise RepositoryRefused(detail, status=409) from None
    for sock in sockets:
        sock.close()


def served(connectors: Iterable[ConnectorConfig]) -> dict[str, ConnectorConfig]:
    return {c.listen: c for c in connectors if c.served_by == "portway"}


@dataclass
class Changes:
    opened: list[tuple[ConnectorConfig, list[socket.socket]]] = field(default_factory=list)
    updated: list[ConnectorConfig] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


class ListenerBook:
    """The connector sockets this process holds, and the connectors it could not bind."""

    def __init__(
        self, held: Sequence[tuple[ConnectorConfig, socket.socket]] = (), reuse_port: bool = False
    ) -> None:
        self.reuse_port = reuse_port  # [server] share_connector_ports
        self.held: dict[str, tuple[ConnectorConfig, list[socket.socket]]] = {}
        for config, sock in held:
            self.held.setdefault(config.listen, (config, []))[1].append(sock)
        self.failed: dict[str, tuple[ConnectorConfig, str]] = {}
        self._retry_at = 0.0

    def pairs(self) -> list[tuple[ConnectorConfig, socket.socket]]:
        return [(c, s) for c, socks in self.held.values() for s in socks]

    def retry_due(self, now: float) -> bool:
        return bool(self.failed) and now >= self._retry_at

    def reconcile(self, desired: dict[str, ConnectorConfig], now: float) -> Changes:
        """Bind what is new (or failed before), close what is gone. The caller must tell the
        workers and close the `closed` sockets' last copies (`release`)."""
        changes = Changes()
        for listen in [k for k in self.held if k not in desired]:
            changes.closed.append(listen)
        for listen in [k for k in self.failed if k not in desired]:
            del self.failed[listen]
            changes.closed.append(listen)
        for listen, config in desired.items():
            held = self.held.get(listen)
            if held is not None:
                if held[0] != config:
                    self.held[listen] = (config, held[1])
                    changes.updated.append(config)
                continue
            previous = self.failed.get(listen)
            try:
                sockets = bind_listener(listen, reuse_port=self.reuse_port)
            except (ListenError, OSError) as exc:
                detail = str(exc)
                if previous is None or previous[1] != detail:
                    log.error("connector %s not listening: %s (retried every %gs)",
                              listen, detail, RETRY)  # fmt: skip
                    changes.failed.append((listen, detail))
                self.failed[listen] = (config, detail)
                continue
            self.failed.pop(listen, None)
            self.held[listen] = (config, sockets)
            changes.opened.append((config, sockets))
            log.info("connector %s: listening (repository %s)", listen, config.repository)
        self._retry_at = now + RETRY
        return changes

    def release(self, listen: str) -> None:
        held = self.held.pop(listen, None)
        for sock in held[1] if held else ():
            sock.close()
        if held is not None:
            log.info("connector %s: closed", listen)


class Watch:
    """Polls a `ConnectorSource` and reconciles a `ListenerBook` when it moved."""

    def __init__(self, source: ConnectorSource, book: ListenerBook) -> None:
        self.source = source
        self.book = book
        self._generation: object = None
        self._force = False

    def force(self) -> None:
        """Reconcile at the next poll (the file's connectors changed)."""
        self._force = True

    def poll(self, now: float | None = None) -> Changes | None:
        now = time.monotonic() if now is None else now
        try:
            generation = self.source.generation()
            if generation == self._generation and not self._force and not self.book.retry_due(now):
                return None
            desired = served(self.source.connectors())
        except Exception as exc:  # a database away: keep the listeners as they are
            log.debug("connectors not read: %s", exc)
            return None
        self._generation, self._force = generation, False
        return self.book.reconcile(desired, now)


# -- messages from the listener holder to a worker ----------------------------------------


def send(channel: socket.socket, changes: Changes) -> None:
    """Tell one worker (a failure means it is gone; the supervisor replaces it)."""
    messages: list[tuple[dict[str, Any], list[int]]] = []
    for config, sockets in changes.opened:
        body = {"op": "open", "connector": config.model_dump(mode="json")}
        messages.append((body, [s.fileno() for s in sockets]))
    for config in changes.updated:
        messages.append(({"op": "update", "connector": config.model_dump(mode="json")}, []))
    for listen in changes.closed:
        messages.append(({"op": "close", "listen": listen}, []))
    for listen, detail in changes.failed:
        messages.append(({"op": "failed", "listen": listen, "detail": detail}, []))
    with contextlib.suppress(OSError):
        for body, fds in messages:
            socket.send_fds(channel, [json.dumps(body).encode()], fds)


class LiveSites:
    """A worker's connector listeners, opened and closed while it runs."""

    def __init__(
        self,
        runner: web.BaseRunner,
        gate: ConnectionGate,
        routes: Callable[[], RouteTable],
        header_timeout: float,
        states: dict[str, ListenerState],
    ) -> None:
        self.runner = runner
        self.gate = gate
        self.routes = routes
        self.header_timeout = header_timeout
        self.states = states
        self.sites: dict[str, tuple[ConnectorConfig, list[ListenerSite]]] = {}
        self._queue: asyncio.Queue[tuple[dict[str, Any], list[int]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def open(self, config: ConnectorConfig, sockets: Sequence[socket.socket]) -> int:
        """Serve `sockets` for `config`; returns the port."""
        if config.listen in self.sites:
            for sock in sockets:
                sock.close()  # already served (sent at spawn and again)
            return self.sites[config.listen][1][0].port
        try:
            context = ssl_context(config.tls)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.states[config.listen] = ("failed", f"tls: {exc}")
            for sock in sockets:
                sock.close()
            return 0
        sites = []
        for sock in sockets:
            site = ListenerSite(self.runner, sock, self.gate, ssl_context=context,
                                handshake_timeout=self.header_timeout)  # fmt: skip
            await site.start()
            sites.append(site)
        self.sites[config.listen] = (config, sites)
        self.states[config.listen] = ("listening", None)
        port = sites[0].port
        self.routes().bind_port(port, config.repository, config.external_url)
        return port

    async def update(self, config: ConnectorConfig) -> None:
        held = self.sites.get(config.listen)
        if held is None:
            return
        old, sites = held
        if old.tls != config.tls:  # same sockets, new certificates
            socks = [site.sock.dup() for site in sites]
            for site in sites:
                await site.stop()
            del self.sites[config.listen]
            await self.open(config, socks)
            return
        self.sites[config.listen] = (config, sites)
        self.routes().bind_port(sites[0].port, config.repository, config.external_url)

    async def close(self, listen: str) -> None:
        self.states.pop(listen, None)
        held = self.sites.pop(listen, None)
        if held is None:
            return
        port = held[1][0].port
        for site in held[1]:
            await site.stop()  # accepted connections go on until their requests are done
        self.routes().unbind_port(port)

    # -- the control socket ----------------------------------------------------------------
    def attach(self, channel: socket.socket) -> None:
        """Read the listener holder's messages from `channel` (supervisor.py)."""
        channel.setblocking(False)
        loop = asyncio.get_running_loop()
        loop.add_reader(channel.fileno(), self._readable, channel)
        self._task = loop.create_task(self._apply_loop())

    def _readable(self, channel: socket.socket) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(channel, 65536, MAX_FDS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data:  # the supervisor is gone
                asyncio.get_running_loop().remove_reader(channel.fileno())
                return
            self._queue.put_nowait((json.loads(data), fds))

    async def _apply_loop(self) -> None:
        while True:
            body, fds = await self._queue.get()
            try:
                await self.apply(body, fds)
            except Exception:  # pragma: no cover - a bad message must not stop the worker
                log.exception("connector change not applied: %s", body)

    async def apply(self, body: dict[str, Any], fds: list[int]) -> None:
        op = body.get("op")
        if op == "open":
            config = ConnectorConfig.model_validate(body["connector"])
            await self.open(config, [socket.socket(fileno=fd) for fd in fds])
        elif op == "update":
            await self.update(ConnectorConfig.model_validate(body["connector"]))
        elif op == "close":
            await self.close(body["listen"])
        elif op == "failed":
            self.states[body["listen"]] = ("failed", body.get("detail"))

    async def apply_changes(self, changes: Changes, book: ListenerBook) -> None:
        """The one-worker case: the book is this process's own."""
        for config, sockets in changes.opened:
            # The book keeps its sockets (to close them later); the site gets duplicates.
            await self.open(config, [s.dup() for s in sockets])
        for config in changes.updated:
            await self.update(config)
        for listen in changes.closed:
            await self.close(listen)
            book.release(listen)
        for listen, detail in changes.failed:
            self.states[listen] = ("failed", detail)

    async def close_all(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def watch_loop(watch: Watch, sites: LiveSites) -> None:
    """The one-worker case: this process watches the definitions itself."""
    while True:
        await asyncio.sleep(POLL)
        changes = await asyncio.to_thread(watch.poll)
        if changes is not None:
            await sites.apply_changes(changes, watch.book)
