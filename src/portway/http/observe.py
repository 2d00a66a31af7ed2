"""Operations wiring: the metrics and access-log middleware, and the health and metrics routes.

`/metrics` answers on the main listener only (never under /v2/, never on a connector bound to
one repository); the health routes answer on every listener, for load balancers in front of
connectors too. See portway.observe for what each part does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

from aiohttp import web
from aiohttp.typedefs import Middleware

from portway.http.context import CONTEXT_KEY, AppContext
from portway.http.drain import draining
from portway.http.errors import FAULTS_KEY, Handler, failure_response
from portway.http.forwarded import client_address
from portway.observe import multiproc
from portway.observe.accesslog import HEADER, AccessLog, RequestIds
from portway.observe.health import BucketProbe, Health
from portway.observe.journal import FLUSH_INTERVAL as JOURNAL_INTERVAL
from portway.observe.journal import Journal, Where
from portway.observe.metrics import FLUSH_INTERVAL, Recorder
from portway.oci.errors import RegistryError
from portway.storage.faults import StorageFaults

REQUEST_ID = "portway.request_id"
_ROUTE = "portway.route"  # set by portway.http.auth.remember_route
DEAD_WORKER_SWEEP = 10  # flushes between looks for dead workers' gauges
CLIENT_GONE = 499  # status recorded for a request whose client left before its answer


@dataclass
class Observer:
    health: Health
    journal: Journal
    ids: RequestIds = field(default_factory=RequestIds)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def recorder(self) -> Recorder | None:
        return self.journal.recorder

    @property
    def access(self) -> AccessLog | None:
        return self.journal.access

    @property
    def active(self) -> bool:
        """Metrics or the access log on: the observe middleware runs."""
        return self.recorder is not None or self.access is not None

    def flush_metrics(self) -> None:
        """Count what the journal holds, then move the counts into the metric files."""
        self.journal.drain()
        if self.recorder is not None:
            self.journal.count_in_flight()
            self.recorder.flush()


OBSERVE_KEY = web.AppKey("portway.observe", Observer)


def _metrics_dir(data_dir: Path) -> Path:
    """Where the workers' metric files live: outside the data directory, whose disk may fill
    up (a full file system under prometheus-client's memory-mapped files kills the worker)."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"portway-metrics-{digest}"


def build_observer(ctx: AppContext) -> Observer:
    server = ctx.settings.server
    recorder = None
    if server.metrics:
        names = [r.name for r in ctx.settings.repository]
        recorder = Recorder(_metrics_dir(server.data_dir), names, server.metrics_repository_labels)
    storage = ctx.settings.storage
    bucket = None
    if storage.type == "s3":
        bucket = BucketProbe(storage.bucket, storage.endpoint or None, storage.region,
                             storage.prefix, server.health_check_interval)  # fmt: skip
    health = Health(
        server.data_dir / "portway.db",
        storage.path or server.data_dir / "storage",
        server.health_check_interval,
        database_url=ctx.settings.database.url,
        bucket=bucket,
        on_result=(lambda name, c: recorder.health(name, c.writable, c.seconds))
        if recorder is not None
        else None,
    )
    # Kept (switched off) while metrics run, so that SIGHUP can switch it on again.
    access = None
    if server.access_log or recorder is not None:
        access = AccessLog(server.log_format, on=server.access_log)
    return Observer(health, Journal(recorder, access, lambda r, p: _repository(r, p, ctx)))


def install(app: web.Application, ctx: AppContext) -> Observer:
    """Add the routes and the background checks to `app`; the caller (portway.http.app)
    adds `middleware(obs, ctx)` outermost when `obs.active`."""
    obs = build_observer(ctx)
    app[OBSERVE_KEY] = obs
    app.cleanup_ctx.append(_background)
    if obs.recorder is not None:
        app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/livez", handle_livez)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/startupz", handle_startupz)
    app.router.add_get("/service/rest/v1/status", handle_nexus_status)
    app.router.add_get("/service/rest/v1/status/writable", handle_nexus_writable)
    return obs


# -- middleware ---------------------------------------------------------------------------


def _repository(where: Where, path: str, ctx: AppContext) -> str | None:
    """The repository of a request the route table matched as `where` (repository, rest)."""
    if where is None:
        return None
    repository, rest = where
    if repository is not None:
        return repository
    # Repository path on a shared host: /v2/<repository>/<image>/...
    if rest.startswith("/v2/"):
        name = rest[4:].partition("/")[0]
        if name in ctx.repos:
            return name
    return None


def _client(request: web.Request, ctx: AppContext) -> str | None:
    """The client's address as portway.http.forwarded decides it, without its cost when the
    peer is no trusted proxy or sent no forwarding header."""
    peer = request.remote
    if not ctx.trusted.trusts(peer):
        return peer
    headers = request.headers
    if "X-Forwarded-For" in headers or "Forwarded" in headers or "X-Real-IP" in headers:
        return client_address(request, ctx.trusted)
    return peer


def _principal(request: web.Request, ctx: AppContext) -> str | None:
    who = getattr(ctx.authorizer, "principal", None)
    if who is None:
        return None
    principal = who(request)
    return getattr(principal, "name", None) if principal is not None else None


def middleware(obs: Observer, ctx: AppContext) -> Middleware:
    """The outermost (and only) middleware while metrics or the access log run: request id,
    error rendering (portway.http.errors, here rather than one more layer), sending the
    answer, then noting what the client got in the journal (portway.observe.journal, which
    counts and logs it in batches). Everything that does not change between requests is
    looked up once, here."""
    journal = obs.journal
    live = journal.live
    note = journal.rows.append  # drained in place every 0.2 s (journal.drain)
    access = obs.access  # written only while access.level_on (SIGHUP may switch it)
    new_id = obs.ids.new

    @web.middleware
    async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = perf_counter()
        given = request.headers.get(HEADER)
        if given is None:
            rid = new_id()
        elif RequestIds.acceptable(given) and ctx.trusted.trusts(request.remote):
            rid = given
        else:
            rid = new_id()
        request[REQUEST_ID] = rid
        path = request.raw_path.partition("?")[0]
        key = id(request)
        live[key] = path
        response: web.StreamResponse | None = None
        status = 500
        try:
            try:
                response = await handler(request)
            except Exception as exc:  # an answer of its own: errors.failure_response
                response = failure_response(request, exc)
            status = response.status
            # Send it here, so what is counted and logged is what the client got.
            try:
                await response.prepare(request)
                await response.write_eof()
            except ConnectionError:
                # The client went away while it was being answered: nothing to report but
                # the count. aiohttp's own finishing of this response sees the same closed
                # transport and ignores it quietly.
                status = CLIENT_GONE
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except (ConnectionError, asyncio.CancelledError):
            status = CLIENT_GONE
            raise
        finally:
            end = perf_counter()
            del live[key]
            method = request.method
            sent = 0
            if response is not None and status != CLIENT_GONE and method != "HEAD":
                length = response.content_length
                sent = response.body_length if length is None else length
            if access is not None and access.level_on:
                client = _client(request, ctx)
                principal = _principal(request, ctx)
                agent = request.headers.get("User-Agent")
            else:
                client = principal = agent = None
            route = request.get(_ROUTE)
            where = None if route is None else (route.repository, route.rest)
            note((path, method, status, where, end, end - start,
                  request.content.total_bytes, sent, rid, client, principal, agent))  # fmt: skip

    return observe_middleware


# -- background ---------------------------------------------------------------------------


def _storage_faults(ctx: AppContext) -> StorageFaults | None:
    """The blob store's fault counters (every repository shares the one blob store)."""
    for repo in ctx.repos.values():
        faults = getattr(getattr(repo, "blobs", None), "faults", None)
        if isinstance(faults, StorageFaults):
            return faults
    return None


async def _drain_journal(journal: Journal) -> None:
    try:
        while True:
            await asyncio.sleep(JOURNAL_INTERVAL)
            journal.drain()
    finally:
        journal.drain()


def _breaker_states(ctx: AppContext) -> dict[str, tuple[bool, int]]:
    states = {}
    for name, repo in ctx.repos.items():
        state = getattr(repo, "breaker_state", None)
        if state is not None:
            now = state()
            states[name] = (bool(now.blocked), int(now.consecutive_failures))
    return states


async def _flush_loop(app: web.Application, obs: Observer, recorder: Recorder) -> None:
    faults = app.get(FAULTS_KEY)
    ctx = app[CONTEXT_KEY]
    storage = _storage_faults(ctx)
    proxies = any(hasattr(repo, "breaker_state") for repo in ctx.repos.values())
    rounds = 0
    while True:
        await asyncio.sleep(FLUSH_INTERVAL)
        obs.flush_metrics()
        if faults is not None:
            recorder.sync_faults(faults.refused)
        if storage is not None:
            recorder.sync_damaged(storage.damaged_blobs)
        if proxies:
            recorder.breakers(_breaker_states(ctx))
        rounds += 1
        if rounds % DEAD_WORKER_SWEEP == 0:
            await asyncio.to_thread(multiproc.mark_dead_workers, recorder.folder)


async def _background(app: web.Application) -> AsyncIterator[None]:
    obs = app[OBSERVE_KEY]
    await obs.health.check_once()
    obs.tasks.append(asyncio.create_task(obs.health.run()))
    if obs.recorder is not None:
        obs.tasks.append(asyncio.create_task(_flush_loop(app, obs, obs.recorder)))
    if obs.active:
        obs.tasks.append(asyncio.create_task(_drain_journal(obs.journal)))
    yield
    for task in obs.tasks:
        task.cancel()
    for task in obs.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    obs.flush_metrics()


# -- routes -------------------------------------------------------------------------------


def _on_main_listener(request: web.Request) -> bool:
    ports = request.app[CONTEXT_KEY].routes.ports
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    port = int(sockname[1]) if isinstance(sockname, tuple) and len(sockname) >= 2 else 0
    # The main listener is opened (and bound in the route table) first.
    return next(iter(ports), None) == port


async def handle_metrics(request: web.Request) -> web.StreamResponse:
    obs = request.app[OBSERVE_KEY]
    if obs.recorder is None or not _on_main_listener(request):
        raise RegistryError("NOT_FOUND", "metrics are served on the main listener at /metrics")
    obs.flush_metrics()
    body = await asyncio.to_thread(obs.recorder.render)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


def _json(status: int, doc: object) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(doc).encode(), content_type="application/json"
    )


def _state(request: web.Request, ok: bool) -> web.Response:
    health = request.app[OBSERVE_KEY].health
    return _json(200 if ok else 503, {"status": "ok" if ok else "unavailable",
                                      "checks": health.report()})  # fmt: skip


async def handle_livez(request: web.Request) -> web.StreamResponse:
    return _json(200, {"status": "ok"})


async def handle_readyz(request: web.Request) -> web.StreamResponse:
    if draining(request.app):  # the load balancer in front takes this worker out
        return _json(503, {"status": "draining", "reason": "this worker is stopping"})
    if "node" not in request.query:
        return _state(request, request.app[OBSERVE_KEY].health.ready)
    from portway.http.node_info import node_section  # `portway doctor --cluster` asks

    health = request.app[OBSERVE_KEY].health
    doc = {"status": "ok" if health.ready else "unavailable", "checks": health.report(),
           "node": await node_section(request)}  # fmt: skip
    return _json(200 if health.ready else 503, doc)


async def handle_startupz(request: web.Request) -> web.StreamResponse:
    health = request.app[OBSERVE_KEY].health
    started = health.started_at is not None
    return _json(200 if started else 503, {"status": "ok" if started else "starting"})


async def handle_nexus_status(request: web.Request) -> web.StreamResponse:
    """Nexus: 200 (empty) when this node can serve reads."""
    if request.app[OBSERVE_KEY].health.readable:
        return web.Response(status=200)
    return _state(request, False)


async def handle_nexus_writable(request: web.Request) -> web.StreamResponse:
    """Nexus: 200 (empty) when this node can serve writes."""
    if request.app[OBSERVE_KEY].health.writable:
        return web.Response(status=200)
    return _state(request, False)
