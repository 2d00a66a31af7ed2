"""Listeners and worker processes.

One aiohttp application serves every listener: the main one and each connector are just
sockets, so a connector costs a file descriptor, not a thread pool. `portway serve` binds
every listener once, in the first process; with `workers > 1` it then prepares the database
and starts N processes (see `supervisor.py`) that accept from those same sockets and share
nothing but the database and the blob store (ADR 9).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from functools import partial
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from portway.config import ConnectorConfig, Settings
from portway.db.connector_states import share_loop
from portway.http import reload
from portway.http.app import build_app
from portway.http.auth import SecurityAuthorizer
from portway.http.context import AppContext, Authorizer
from portway.http.drain import drain
from portway.http.drain import install as install_drain
from portway.http.listeners import (
    ConnectionGate,
    ListenError,
    ListenerSite,
    bind_listener,
    connection_limit,
    raise_descriptor_limit,
)
from portway.http.live_connectors import (
    ConnectorSource,
    ListenerBook,
    LiveSites,
    Watch,
    ssl_context,
    watch_loop,
)
from portway.http.observe import OBSERVE_KEY, Observer
from portway.http.protocol import RegistryRunner, RegistryServer
from portway.http.supervisor import Supervisor
from portway.maintenance.proxy_state import SharedProxyHealth, publish_loop
from portway.storage.blobstore import BlobStore

if TYPE_CHECKING:
    from portway.jobs.scheduler import Scheduler

log = logging.getLogger("portway.server")


class Composition(Protocol):
    """What a worker needs of the composition root (portway/compose.py, which is above this
    layer and hands its class to `serve`)."""

    @property
    def blobs(self) -> BlobStore: ...

    def context(self, authorizer: Authorizer | None = None) -> AppContext: ...

    @property
    def proxy_health(self) -> SharedProxyHealth | None: ...

    def scheduler(self) -> Scheduler | None: ...

    def connector_source(self) -> ConnectorSource: ...

    async def aclose(self) -> None: ...

    def close(self) -> None: ...


Compose = Callable[[Settings], Composition]
PURGE_INTERVAL = 600.0


# Bound sockets: (the connector they serve, or None for the main listener; the socket).
Listeners = Sequence[tuple[ConnectorConfig | None, socket.socket]]


def bind_listeners(settings: Settings) -> list[tuple[ConnectorConfig | None, socket.socket]]:
    """Bind the main listener and the file's connectors Portway serves; raises `ListenError`
    naming the one that failed. A connector with `served_by = "proxy"` belongs to the reverse
    proxy in front (which may hold it right now): never bound, never probed."""
    bound: list[tuple[ConnectorConfig | None, socket.socket]] = []
    try:
        bound += [(None, sock) for sock in bind_listener(settings.server.listen)]
        share = settings.server.share_connector_ports
        for conn in settings.connector:
            if conn.served_by == "portway":
                bound += [(conn, s) for s in bind_listener(conn.listen, reuse_port=share)]
    except BaseException:
        for _, sock in bound:
            sock.close()
        raise
    return bound


async def open_listeners(
    runner: web.AppRunner, ctx: AppContext, sockets: Listeners
) -> tuple[list[tuple[str, int]], LiveSites]:
    """Serve the bound listeners through one connection gate; returns (scheme, port)s and
    the connectors' sites (which open and close while the worker runs)."""
    server = runner.server
    assert isinstance(server, RegistryServer)
    gate = ConnectionGate(connection_limit(), server.waiting_connections)
    server.on_connection_lost = gate.closed
    timeout = ctx.settings.server.header_timeout
    states = ctx.admin.access.listeners if ctx.admin is not None else {}
    live = LiveSites(runner, gate, lambda: ctx.routes, timeout, states)
    main = ssl_context(ctx.settings.server.tls)
    opened: list[tuple[str, int]] = []
    connectors: dict[str, tuple[ConnectorConfig, list[socket.socket]]] = {}
    for conn, sock in sockets:
        if conn is not None:
            connectors.setdefault(conn.listen, (conn, []))[1].append(sock)
            continue
        site = ListenerSite(runner, sock, gate, ssl_context=main, handshake_timeout=timeout)
        await site.start()
        ctx.routes.bind_port(site.port, None, None)
        opened.append(("https" if main else "http", site.port))
    for conn, socks in connectors.values():
        port = await live.open(conn, socks)
        opened.append(("https" if conn.tls else "http", port))
    log.debug("worker %d holds at most %d connections", os.getpid(), gate.limit)
    return opened, live


async def _purge_loop(ctx: AppContext, blobs: BlobStore) -> None:
    """This node's own leftovers (spool and lock files of a killed worker); upload sessions,
    unfinished writes and refresh tokens are the `upload_purge` job's (once per cluster)."""
    while True:
        await asyncio.sleep(PURGE_INTERVAL)
        try:
            gone = await blobs.spool.purge_leftovers(ctx.settings.server.upload_session_ttl)
            if gone:
                log.info("removed %d spool or lock file(s) left by stopped workers", gone)
        except Exception:  # pragma: no cover - never let the janitor kill a worker
            log.exception("purge failed")


async def purge_once(ctx: AppContext, blobs: BlobStore) -> dict[str, int]:
    """One round of the janitor: upload sessions idle past `upload_session_ttl`, files a
    killed worker left behind, expired refresh tokens. Returns what went, by kind."""
    from portway.repos.hosted import HostedRepository

    ttl = ctx.settings.server.upload_session_ttl
    gone = {"uploads": 0, "leftovers": await blobs.purge_leftovers(ttl), "refresh_tokens": 0}
    if isinstance(ctx.authorizer, SecurityAuthorizer):
        store = ctx.authorizer.auth.store
        gone["refresh_tokens"] = await asyncio.to_thread(store.purge_refresh_tokens)
    for repo in ctx.repos.values():
        if isinstance(repo, HostedRepository):
            count = await repo.purge_uploads(ttl)
            if count:
                log.info("repository %s: purged %d stale upload(s)", repo.name, count)
            gone["uploads"] += count
    if gone["leftovers"]:
        log.info("removed %d spool or lock file(s) left by stopped workers", gone["leftovers"])
    if gone["refresh_tokens"]:
        log.info("forgot %d expired refresh token(s)", gone["refresh_tokens"])
    return gone


async def run_worker(
    settings: Settings,
    sockets: Listeners,
    compose: Compose,
    on_listening: Callable[[], None] | None = None,
    control: socket.socket | None = None,
) -> None:
    """`control`: the supervisor's messages about connectors (live_connectors.py); without
    one this process is alone and watches the connectors itself."""
    root = compose(settings)
    # Opening the database, the admin account, the repositories' rows: all database work,
    # made in a thread so the event loop never waits for it (ADR 29).
    ctx = await asyncio.to_thread(root.context)
    blobs = root.blobs
    app = build_app(ctx)
    draining = install_drain(app)
    runner = RegistryRunner(
        app,
        handle_signals=False,
        access_log=logging.getLogger("portway.access")
        if settings.server.log_level == "debug"
        else None,
        max_line_size=settings.security.max_header_bytes,
        max_field_size=settings.security.max_header_bytes,
        keepalive_timeout=settings.server.keepalive_timeout,
        header_timeout=settings.server.header_timeout,
        shutdown_timeout=1.0,  # what outlived the drain is cut off (drain.py)
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGUSR2 asks the parent for a rolling restart (supervisor.py); sent to the whole process
    # group (`systemctl kill -s USR2`), it must not kill a worker.
    loop.add_signal_handler(signal.SIGUSR2, _no_rolling_restart, on_listening is None)
    reloads: set[asyncio.Task[None]] = set()  # SIGHUP: read the configuration file again
    after = partial(_reloaded, app[OBSERVE_KEY])
    loop.add_signal_handler(signal.SIGHUP, reload.on_signal, root, reloads, after)
    if reload.held():  # the operator reloaded while this worker was starting
        reload.on_signal(root, reloads, after)
    try:
        await blobs.connect()  # S3: the client set up before the first pull waits for it
        opened, live = await open_listeners(runner, ctx, sockets)
        log.info("worker %d listening on %s", os.getpid(), ", ".join(f"{s}:{p}" for s, p in opened))
        if on_listening is not None:
            on_listening()
        scheduler = root.scheduler()
        tasks = []
        if control is not None:
            live.attach(control)
        else:  # alone: the book holds copies, the sites the sockets they serve
            book = ListenerBook(
                [(c, s.dup()) for c, s in sockets if c is not None],
                settings.server.share_connector_ports,
            )
            watch = Watch(root.connector_source(), book)
            tasks.append(asyncio.create_task(watch_loop(watch, live)))
        tasks += [
            asyncio.create_task(_purge_loop(ctx, blobs)),
            *([asyncio.create_task(scheduler.run())] if scheduler is not None else []),
            asyncio.create_task(
                publish_loop(lambda: ctx.repos, settings.server.data_dir, root.proxy_health)
            ),
        ]
        if ctx.admin is not None and ctx.admin.access.shared is not None:
            tasks.append(asyncio.create_task(share_loop(live.states, ctx.admin.access.shared)))
        # What start-up built (modules, the app, the stores) lives as long as the worker: out
        # of the collector's way, so its full passes scan only what serving made since (its
        # garbage collected first, so none of it is kept for good).
        gc.collect()
        gc.freeze()
        log.debug("worker %d: %d start-up objects frozen", os.getpid(), gc.get_freeze_count())
        await stop.wait()
        for task in tasks:
            task.cancel()
        # A job run in progress records itself cancelled and gives its lease back first.
        await asyncio.gather(*tasks, return_exceptions=True)
        await live.close_all()
        await drain(runner, draining, settings.server.drain_timeout)
    finally:
        await runner.cleanup()
        await root.aclose()


def _reloaded(obs: Observer, settings: Settings) -> None:
    reload.reconfigure_access_log(obs, settings.server)


def _no_rolling_restart(alone: bool) -> None:
    if alone:
        log.warning("SIGUSR2: a rolling restart needs workers > 1; ignored")


def _die_with_parent() -> None:
    """Linux: a worker gets SIGKILL when its parent dies, so a killed server leaves no orphans."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _run(
    settings: Settings,
    sockets: Listeners,
    compose: Compose,
    on_listening: Callable[[], None] | None = None,
    control: socket.socket | None = None,
) -> None:
    # asyncio's own loop, not uvloop: uvloop has no loop.sendfile, and blob pulls fell from
    # 3.4 GB/s to 1 GB/s without zero-copy (ADR 3).
    asyncio.run(run_worker(settings, sockets, compose, on_listening, control))


def _worker_main(
    compose: Compose,
    settings: Settings,
    sockets: Listeners,
    ready: Connection,
    control: socket.socket,
) -> None:
    _die_with_parent()
    reload.hold_signal()  # until the event loop handles it
    configure_logging(settings)

    def listening() -> None:  # tells the parent this worker accepts (a rolling restart waits)
        with contextlib.suppress(OSError):
            ready.send(os.getpid())
        ready.close()

    _run(settings, sockets, compose, listening, control)


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )


def serve(settings: Settings, workers: int, compose: Compose) -> int:
    """Bind the listeners, then serve them in this process (one worker) or in `workers`
    supervised processes, each composing the application with `compose` (a class or
    function importable by name: spawned workers are handed it by reference). Returns the
    exit status."""
    configure_logging(settings)
    reload.hold_signal()  # until the supervisor's or the worker's loop handles it
    before, after = raise_descriptor_limit()
    if after != before:
        log.info("raised the open file limit from %d to %d (the hard limit)", before, after)
    try:
        sockets = bind_listeners(settings)
    except ListenError as exc:
        log.error("%s", exc)
        return 2
    if workers <= 1:
        _run(settings, sockets, compose)
        return 0
    main = [(c, s) for c, s in sockets if c is None]
    book = ListenerBook(
        [(c, s) for c, s in sockets if c is not None], settings.server.share_connector_ports
    )
    root = compose(settings)  # the supervisor's own look at the definitions
    try:
        watch = Watch(root.connector_source(), book)
        return Supervisor(settings, main, workers, partial(_worker_main, compose), watch).run()
    finally:
        root.close()
