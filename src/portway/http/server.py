"""Listeners and worker processes.

One aiohttp application serves every listener: the main one and each connector are just
sockets (SO_REUSEPORT), so a connector costs a file descriptor, not a thread pool. With
`workers > 1` the parent prepares the database, then starts N processes that bind the same
ports and share nothing but the database and the blob store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import ssl
import sys
from typing import Any

from aiohttp import web

from portway.config import Settings, TlsConfig, split_listen
from portway.http.app import build_app, build_context, open_stores
from portway.http.auth import SecurityAuthorizer
from portway.http.context import AppContext
from portway.http.protocol import RegistryRunner
from portway.maintenance.proxy_state import publish_loop
from portway.storage.blobstore import BlobStore

log = logging.getLogger("portway.server")
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


async def open_listeners(
    runner: web.AppRunner, ctx: AppContext, *, reuse_port: bool = True
) -> list[tuple[str, int]]:
    """Open the main listener and every connector Portway serves; returns (scheme, port)s.

    `reuse_port` only with several workers: a lone process binds plainly, so a port another
    server already holds fails loudly instead of being silently shared with it.
    """
    opened: list[tuple[str, int]] = []
    for listen, repository, tls, external_url in listener_plan(ctx.settings):
        host, port = split_listen(listen)
        context = _ssl_context(tls)
        site = web.TCPSite(
            runner, host, port, ssl_context=context, reuse_port=reuse_port, backlog=1024
        )
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        real_port = int(sockets[0].getsockname()[1]) if sockets else port
        ctx.routes.bind_port(real_port, repository, external_url)
        opened.append(("https" if context else "http", real_port))
    return opened


async def _purge_loop(ctx: AppContext, blobs: BlobStore) -> None:
    while True:
        await asyncio.sleep(PURGE_INTERVAL)
        try:
            await purge_once(ctx, blobs)
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


async def run_worker(settings: Settings, *, reuse_port: bool = True) -> None:
    meta, blobs = open_stores(settings)
    ctx = build_context(settings, meta, blobs)
    app = build_app(ctx)
    runner = RegistryRunner(
        app,
        handle_signals=False,
        access_log=logging.getLogger("portway.access")
        if settings.server.log_level == "debug"
        else None,
        max_line_size=settings.security.max_header_bytes,
        max_field_size=settings.security.max_header_bytes,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        opened = await open_listeners(runner, ctx, reuse_port=reuse_port)
        log.info("worker %d listening on %s", os.getpid(), ", ".join(f"{s}:{p}" for s, p in opened))
        tasks = [
            asyncio.create_task(_purge_loop(ctx, blobs)),
            asyncio.create_task(publish_loop(ctx.repos, settings.server.data_dir)),
        ]
        await stop.wait()
        for task in tasks:
            task.cancel()
    finally:
        await runner.cleanup()
        for repo in ctx.repos.values():
            close = getattr(repo, "close", None)
            if close is not None:
                await close()
        meta.close()


def _die_with_parent() -> None:
    """Linux: a worker gets SIGKILL when its parent dies, so a killed server leaves no orphans."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _run(settings: Settings, reuse_port: bool = True) -> None:
    # asyncio's own loop, not uvloop: uvloop has no loop.sendfile, and blob pulls fell from
    # 3.4 GB/s to 1 GB/s without zero-copy (ADR 3).
    asyncio.run(run_worker(settings, reuse_port=reuse_port))


def _worker_main(settings: Settings) -> None:
    _die_with_parent()
    configure_logging(settings)
    _run(settings)


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )


def _port_taken(listen: str) -> str | None:
    """Why `listen` cannot be bound by a plain socket (no SO_REUSEPORT), or None.

    Workers bind with SO_REUSEPORT, which would quietly join the listening group of any other
    process of the same user on that port; checking first turns that into an error.
    """
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def serve(settings: Settings, workers: int) -> int:
    configure_logging(settings)
    if workers <= 1:
        _run(settings, reuse_port=False)
        return 0
    for listen, *_ in listener_plan(settings):
        if split_listen(listen)[1] == 0:
            log.error("with several workers every listener needs a fixed port (%s)", listen)
            return 2
        busy = _port_taken(listen)
        if busy is not None:
            log.error("cannot listen on %s: %s", listen, busy)
            return 2
    spawn = multiprocessing.get_context("spawn")
    procs = [
        spawn.Process(target=_worker_main, args=(settings,), daemon=False) for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    stopping = False

    def _stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive() and proc.pid:
                os.kill(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while any(p.is_alive() for p in procs):
        for proc in procs:
            proc.join(0.5)
            if not proc.is_alive() and not stopping:
                log.error("worker %s exited with %s; stopping", proc.pid, proc.exitcode)
                _stop(signal.SIGTERM, None)
    return 0
