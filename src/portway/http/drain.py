"""Graceful drain of one worker on SIGTERM or SIGINT (ADR 18).

1. Stop accepting: the worker closes its copy of every listening socket. The sockets stay open
   in the parent and the other workers, so connections still queued in the kernel, and new
   ones, go to them; with one worker the port refuses new connections from now on.
2. Every answer from now on carries `Connection: close`, and `/readyz` answers 503
   (`"status": "draining"`) to whoever still asks this worker, a load balancer on a kept-alive
   connection for instance.
3. Idle kept-alive connections are closed once they have been seen waiting for a request for
   `IDLE_GRACE` seconds: a client that sends its next request at once gets an answer (with
   `Connection: close`) instead of a reset connection.
4. In-flight requests (a blob download, an upload) finish, for at most `[server]
   drain_timeout` seconds; what still runs then is cut off and logged. Then the worker exits 0.

A second signal during the drain changes nothing (the parent repeats SIGTERM to every worker
when it stops the server).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiohttp import hdrs, web

from portway.http.protocol import RegistryRequestHandler

log = logging.getLogger("portway.server")

IDLE_GRACE = 0.5  # seconds a connection must wait for a request before a drain closes it
TICK = 0.05  # seconds between two looks at the connections during a drain


@dataclass
class DrainState:
    active: bool = False


DRAIN_KEY = web.AppKey("portway.drain", DrainState)


def draining(app: web.Application) -> bool:
    """Is this worker draining? (`/readyz` then answers 503, portway.http.observe.)"""
    state = app.get(DRAIN_KEY)
    return state is not None and state.active


def close_after_answer(response: web.StreamResponse) -> None:
    """From the response hook (portway.http.app), while draining: every answer closes its
    connection, and says so."""
    response.force_close()  # the connection closes after this answer
    # aiohttp has chosen its headers before this hook runs: say so to the client as well
    response.headers[hdrs.CONNECTION] = "close"


def install(app: web.Application) -> DrainState:
    """The drain state of `app` (portway.http.app gives every app one; its response hook
    and `/readyz` read it)."""
    state = app.get(DRAIN_KEY)
    if state is None:
        state = app[DRAIN_KEY] = DrainState()
    return state


def _handlers(runner: web.AppRunner) -> list[RegistryRequestHandler]:
    server = runner.server
    if server is None:
        return []
    return [h for h in list(server._connections) if isinstance(h, RegistryRequestHandler)]


async def drain(runner: web.AppRunner, state: DrainState, timeout: float) -> int:
    """Stop accepting, let in-flight requests finish within `timeout` seconds, close idle
    connections. Returns how many connections were still busy when the time ran out."""
    state.active = True
    started = time.monotonic()
    for site in list(runner.sites):
        await site.stop()
    busy = _handlers(runner)
    log.info(
        "draining: stopped accepting; %d connection(s) open, waiting up to %gs for their "
        "requests to finish",
        len(busy),
        timeout,
    )
    seen_waiting: dict[RegistryRequestHandler, tuple[float, int]] = {}
    deadline = started + timeout
    while True:
        now = time.monotonic()
        handlers = _handlers(runner)
        for handler in handlers:
            if not handler.waiting_for_request():
                seen_waiting.pop(handler, None)
                continue
            since, count = seen_waiting.setdefault(handler, (now, handler._request_count))
            if count != handler._request_count:
                seen_waiting[handler] = (now, handler._request_count)
            elif now - since >= IDLE_GRACE:
                handler.force_close()
        alive = _handlers(runner)  # a closed connection leaves once its handler has ended
        if not alive:
            log.info("drained in %.1fs: every request finished", now - started)
            return 0
        if now >= deadline:
            log.warning(
                "drain_timeout (%gs) passed with %d connection(s) still busy; closing them",
                timeout,
                len(alive),
            )
            # Cancel the requests first: closing a connection under a running sendfile trips
            # asyncio (an InvalidStateError logged from its transport).
            for handler in alive:
                if handler._task_handler is not None:
                    handler._task_handler.cancel()
            await asyncio.sleep(TICK)
            for handler in alive:
                handler.force_close()
            return len(alive)
        await asyncio.sleep(TICK)
