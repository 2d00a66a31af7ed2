"""Error rendering: every refusal leaves as OCI error JSON with its registered status.

Faults of the machine are answered too, never as a bare 500 (docs/adr/0008):

- a full file system (blob store or metadata database): 507 Insufficient Storage, which
  docker, podman and skopeo print as the reason a push failed ("received unexpected HTTP
  status: 507 Insufficient Storage"); reads go on;
- the database's write lock held past `[server] database_busy_timeout`: 503 with
  `Retry-After`; clients retry.

Each kind is logged at most once a minute (with how many requests it refused since), and
counted in `FaultReport`, for a readiness check or a metrics endpoint to read.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import http_exceptions, web

from portway.db.engine import DatabaseBusy, DatabaseFull
from portway.oci.errors import RegistryError
from portway.storage.faults import StorageFull, is_full

log = logging.getLogger("portway.http")
API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
FAULT_LOG_INTERVAL = 60.0  # seconds between log lines for one kind of fault

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(err: RegistryError) -> web.Response:
    extra = {k: v for k, v in err.headers.items() if k.lower() != "content-length"}
    headers = {"Content-Type": "application/json", **extra}
    return web.Response(status=err.status, body=json.dumps(err.body()).encode(), headers=headers)


def parser_error(status: int, exc: BaseException | None, message: str | None) -> RegistryError:
    """The OCI error for a request aiohttp's parser refused with `status` (a 4xx)."""
    if isinstance(exc, http_exceptions.LineTooLong):
        # Its message quotes the line, which may be a credential: name the limit only.
        return RegistryError(
            "UNSUPPORTED", "malformed HTTP request: a header line is too long", status=431
        )
    text = (message or "").strip()
    first = text.splitlines()[0].rstrip(":") if text else "cannot parse it"
    return RegistryError("UNSUPPORTED", f"malformed HTTP request: {first}", status=status)


@dataclass
class FaultReport:
    """Requests refused for a fault of the machine, by kind (`storage_full`, `database_busy`)."""

    refused: dict[str, int] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)  # time.time() of the latest refusal
    _logged: dict[str, tuple[float, int]] = field(default_factory=dict)  # kind -> (at, count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, kind: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            count = self.refused.get(kind, 0) + 1
            self.refused[kind] = count
            self.last[kind] = time.time()
            at, logged_count = self._logged.get(kind, (-FAULT_LOG_INTERVAL, 0))
            if now - at < FAULT_LOG_INTERVAL:
                return
            self._logged[kind] = (now, count)
        log.warning("%s (refused %d since the last report)", message, count - logged_count)


FAULTS_KEY = web.AppKey("portway.faults", FaultReport)


def fault_error(exc: BaseException) -> tuple[str, RegistryError] | None:
    """The answer to a fault of the machine, and its kind; None for anything else."""
    if isinstance(exc, DatabaseBusy):
        return "database_busy", RegistryError(
            "UNAVAILABLE",
            f"{exc}; nothing was written, retry later",
            status=503,
            headers={"Retry-After": str(exc.retry_after)},
        )
    if isinstance(exc, StorageFull | DatabaseFull) or is_full(exc):
        text = str(exc) if not isinstance(exc, OSError) else "storage is full: no space left"
        return "storage_full", RegistryError(
            "UNAVAILABLE",
            f"{text}; nothing was stored: free space, then push again (pulls still work)",
            status=507,
        )
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Used when neither metrics nor the access log run; otherwise the observe middleware
    (portway.http.observe) calls `failure_response` itself, one layer fewer per request."""
    try:
        return await handler(request)
    except Exception as exc:
        return failure_response(request, exc)


def failure_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to what a handler raised; raises again what is not for us to answer (a
    client that left, aiohttp's redirects and 405s)."""
    if isinstance(exc, RegistryError):
        if exc.status >= 500:
            log.warning("%s %s -> %s %s", request.method, request.path, exc.code, exc.message)
        response = error_response(exc)
        if exc.close_connection:
            response.force_close()
        return response
    if isinstance(exc, web.HTTPException):
        if exc.status >= 400 and exc.status != 405:
            code = {404: "NOT_FOUND", 413: "SIZE_INVALID"}.get(exc.status, "UNSUPPORTED")
            return error_response(RegistryError(code, exc.reason, status=exc.status))
        raise exc
    if isinstance(exc, http_exceptions.HttpProcessingError):
        # The body broke the HTTP framing mid-request (see portway.http.protocol).
        response = error_response(parser_error(400, exc, exc.message))
        response.force_close()
        return response
    if isinstance(exc, ConnectionError):
        raise exc
    if isinstance(exc, DatabaseBusy | DatabaseFull | StorageFull | OSError):
        fault = fault_error(exc)
        if fault is not None:
            kind, refusal = fault
            report = request.app.get(FAULTS_KEY)
            if report is not None:
                report.note(kind, refusal.message)
            return error_response(refusal)
    log.error("unexpected error serving %s %s", request.method, request.path, exc_info=exc)
    return error_response(RegistryError("UNAVAILABLE", "internal error", status=500))
