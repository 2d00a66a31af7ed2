"""What an upstream registry's error answer means: the `UpstreamError` for a status of 400 or
more, with the OCI error codes and message the body carries."""

from __future__ import annotations

import json

import aiohttp

from .auth import UpstreamAuth
from .errors import (
    UpstreamError,
    UpstreamNotFoundError,
    UpstreamRateLimitedError,
    UpstreamServerError,
    UpstreamUnauthorizedError,
    parse_retry_after,
)

MAX_ERROR_BODY = 64 * 1024
_NOT_FOUND_CODES = {"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN", "NOT_FOUND"}


async def error_of(
    resp: aiohttp.ClientResponse, method: str, what: str, auth: UpstreamAuth
) -> UpstreamError:
    """The error an upstream's answer of 400 or more stands for: its OCI error codes and
    message, read from a body of at most MAX_ERROR_BODY (not for HEAD), and its status."""
    url = str(resp.url)
    status = resp.status
    codes: list[str] = []
    message = ""
    if method != "HEAD":
        try:
            body = await resp.content.read(MAX_ERROR_BODY)
            doc = json.loads(body)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
            for item in doc["errors"]:
                if isinstance(item, dict):
                    codes.append(str(item.get("code", "")))
                    message = message or str(item.get("message", ""))
    detail = f" ({', '.join(c for c in codes if c)})" if any(codes) else ""
    said = f": {message}" if message else ""
    if status == 404 or _NOT_FOUND_CODES.intersection(codes):
        code = next((c for c in codes if c in _NOT_FOUND_CODES), None)
        return UpstreamNotFoundError(url, f"{what} not found{detail}", status=status, code=code)
    if status == 429:
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        wait = f"; it asks to retry after {retry_after:g} s" if retry_after is not None else ""
        return UpstreamRateLimitedError(
            url,
            f"rate limit reached (429) asking for {what}{wait}",
            retry_after=retry_after,
        )
    if status in (401, 403):
        if status == 403 and not auth.has_credentials:
            return auth.refused(url, status)
        if status == 403:
            return UpstreamUnauthorizedError(
                url, f"denied access to {what} (403){detail}{said}", status=status
            )
        return auth.refused(url, status)
    if status >= 500:
        return UpstreamServerError(
            url, f"failed with {status} {resp.reason} asking for {what}{said}", status=status
        )
    return UpstreamServerError(
        url, f"answered {status} {resp.reason} asking for {what}{detail}{said}", status=status
    )
