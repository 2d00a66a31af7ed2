"""Errors of the admin API as RFC 9457 problem details (`application/problem+json`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus

from aiohttp import web
from pydantic import ValidationError

PROBLEM_TYPE = "application/problem+json"


class Problem(Exception):
    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.headers = dict(headers or {})
        self.errors = errors

    def response(self, instance: str) -> web.Response:
        body: dict[str, object] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        if self.errors:
            body["errors"] = self.errors
        return web.Response(
            status=self.status,
            body=json.dumps(body).encode(),
            content_type=PROBLEM_TYPE,
            headers=self.headers,
        )


def invalid(exc: ValidationError) -> Problem:
    """A request body that does not fit its model: 400 naming each field."""
    errors = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        errors.append({"field": where, "message": err["msg"].removeprefix("Value error, ")})
    text = "; ".join(
        f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors[:5]
    )
    return Problem(400, text or "invalid request body", errors=errors)


def check_if_match(header: str | None, etag: str, what: str) -> None:
    """412 when an `If-Match` header names none of `etag` (weak or strong; `*` matches)."""
    if header is None or header.strip() == "*":
        return
    if etag not in [t.strip().removeprefix("W/") for t in header.split(",")]:
        raise Problem(
            412, f"{what} changed since it was read (ETag {etag})", headers={"ETag": etag}
        )
