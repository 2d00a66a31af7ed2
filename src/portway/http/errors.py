"""Error rendering: every refusal leaves as OCI error JSON with its registered status."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import http_exceptions, web

from portway.oci.errors import RegistryError

log = logging.getLogger("portway.http")
API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")

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


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RegistryError as err:
        if err.status >= 500:
            log.warning("%s %s -> %s %s", request.method, request.path, err.code, err.message)
        response = error_response(err)
        if err.close_connection:
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.status != 405:
            code = {404: "NOT_FOUND", 413: "SIZE_INVALID"}.get(exc.status, "UNSUPPORTED")
            return error_response(RegistryError(code, exc.reason, status=exc.status))
        raise
    except http_exceptions.HttpProcessingError as exc:
        # The body broke the HTTP framing mid-request (see portway.http.protocol).
        response = error_response(parser_error(400, exc, exc.message))
        response.force_close()
        return response
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error_response(RegistryError("UNAVAILABLE", "internal error", status=500))


async def add_api_version(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[API_VERSION[0]] = API_VERSION[1]
