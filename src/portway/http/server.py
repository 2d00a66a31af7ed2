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
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from functools import partial
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from portway.config import Settings, TlsConfig
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

    async def aclose(self) -> None: ...


Compose = Callable[[Settings], Composition]
PURGE_INTERVAL = 600.0


def _ssl_context(tls: TlsConfig | tuple[TlsConfig, ...] | None) -> ssl.SSLContext | None:
    if tls is None:
        return None
    from portway.tls.context import build_ssl_context

    return build_ssl_context(tls)


def listener_plan(settings: Settings) -> list[tuple[str, str | None, Any, str | None]]:
    """(listen, repository, tls, external_url) of every socket Portway itself opens: the main
    listener and the connectors it serves. A connector with `served_by = "proxy"` belongs to
    the reverse proxy in front (which may hold it right now): never bound, never probed."""
    plan: list[tuple[str, str | None, Any, str | None]] = [
        (settings.server.listen, None, settings.server.tls, None)
    ]
    for conn in settings.connector:
        if conn.served_by == "portway":
            plan.append((conn.listen, conn.repository, conn.tls, conn.external_url))
    return plan


Listeners = Sequence[tuple[int, socket.socket]]  # (index in listener_plan, bound socket)


def bind_listeners(settings: Settings) -> list[tuple[int, socket.socket]]:
    """Bind every listener of `listener_plan`; raises `ListenError` naming the one that failed."""
    bound: list[tuple[int, socket.socket]] = []
    try:
        for index, (listen, *_) in enumerate(listener_plan(settings)):
            bound += [(index, sock) for sock in bind_listener(listen)]
    except BaseException:
        for _, sock in bound:
            sock.close()
        raise
    return bound


async def open_listeners(
    runner: web.AppRunner, ctx: AppContext, sockets: Listeners
) -> list[tuple[str, int]]:
    """Serve the bound listeners through one connection gate; returns (scheme, port)s."""
    server = runner.server
    assert isinstance(server, RegistryServer)
    gate = ConnectionGate(connection_limit(), server.waiting_connections)
    server.on_connection_lost = gate.closed
    plan = listener_plan(ctx.settings)
    contexts: dict[int, ssl.SSLContext | None] = {}
    opened: list[tuple[str, int]] = []
    for index, sock in sockets:
        _, repository, tls, external_url = plan[index]
        if index not in contexts:
            contexts[index] = _ssl_context(tls)
        site = ListenerSite(
            runner,
            sock,
            gate,
            ssl_context=contexts[index],
            handshake_timeout=ctx.settings.server.header_timeout,
        )
        await site.start()
        ctx.routes.bind_port(site.port, repository, external_url)
        opened.append(("https" if contexts[index] else "http", site.port))
    log.debug("worker %d holds at most %d connections", os.getpid(), gate.limit)
    return opened


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
) -> None:
    root = compose(settings)
    ctx = root.context()
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
    loop.add_signal_handler(signal.SIGHUP, reload.on_signal, root, reloads)
    try:
        opened = await open_listeners(runner, ctx, sockets)
        log.info("worker %d listening on %s", os.getpid(), ", ".join(f"{s}:{p}" for s, p in opened))
        if on_listening is not None:
            on_listening()
        scheduler = root.scheduler()
        tasks = [
            asyncio.create_task(_purge_loop(ctx, blobs)),
            *([asyncio.create_task(scheduler.run())] if scheduler is not None else []),
            asyncio.create_task(
                publish_loop(lambda: ctx.repos, settings.server.data_dir, root.proxy_health)
            ),
        ]
        await stop.wait()
        for task in tasks:
            task.cancel()
        # A job run in progress records itself cancelled and gives its lease back first.
        await asyncio.gather(*tasks, return_exceptions=True)
        await drain(runner, draining, settings.server.drain_timeout)
    finally:
        await runner.cleanup()
        await root.aclose()


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
) -> None:
    # asyncio's own loop, not uvloop: uvloop has no loop.sendfile, and blob pulls fell from
    # 3.4 GB/s to 1 GB/s without zero-copy (ADR 3).
    asyncio.run(run_worker(settings, sockets, compose, on_listening))


def _worker_main(
    compose: Compose, settings: Settings, sockets: Listeners, ready: Connection
) -> None:
    _die_with_parent()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the event loop handles it
    configure_logging(settings)

    def listening() -> None:  # tells the parent this worker accepts (a rolling restart waits)
        with contextlib.suppress(OSError):
            ready.send(os.getpid())
        ready.close()

    _run(settings, sockets, compose, listening)


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
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until a worker's event loop handles it
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
    return Supervisor(settings, sockets, workers, partial(_worker_main, compose)).run()
