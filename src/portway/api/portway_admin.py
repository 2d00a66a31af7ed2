"""Signing keys (`/api/v1/keys`) and the audit log (`/api/v1/audit`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from portway.api.problems import Problem
from portway.api.routing import Call, Operation, Param, json_response, no_content
from portway.auth import audit_db

AUDIT_PAGE = 100


class Keys(BaseModel):
    current: str
    kids: list[str]


class Rotated(BaseModel):
    kid: str


class AuditRecord(BaseModel):
    ts: str
    event: str
    principal: str | None = None
    client: str | None = None
    repository: str | None = None
    outcome: str | None = None
    detail: dict[str, Any] = {}
    node: str | None = None  # the node that wrote it (a cluster's log)


class AuditPage(BaseModel):
    items: list[AuditRecord]
    nextCursor: str | None = None


async def list_keys(call: Call) -> web.StreamResponse:
    current, kids = await asyncio.to_thread(call.services.keys.list)
    return json_response(Keys(current=current, kids=kids).model_dump())


async def rotate_key(call: Call) -> web.StreamResponse:
    kid = await asyncio.to_thread(call.services.keys.rotate, actor=call.actor)
    return json_response(Rotated(kid=kid).model_dump(), 201)


async def remove_key(call: Call) -> web.StreamResponse:
    await asyncio.to_thread(call.services.keys.remove, call.path("kid"), actor=call.actor)
    return no_content()


def read_audit(
    path: Path, offset: int, filters: dict[str, str], since: str | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Records from byte `offset` on that match; and the offset to go on from (None: end)."""
    out: list[dict[str, Any]] = []
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return out, None
    with handle:
        handle.seek(offset)
        while True:
            line = handle.readline()
            if not line:
                return out, None
            if not line.endswith(b"\n"):
                return out, None  # a record being written
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn line from a full disk (auth/audit.py)
            if not isinstance(record, dict):
                continue
            if any(record.get(k) != v for k, v in filters.items()):
                continue
            if since and str(record.get("ts", "")) < since:
                continue
            out.append(record)
            if len(out) >= limit:
                return out, handle.tell()


async def audit(call: Call) -> web.StreamResponse:
    try:
        offset = int(call.query("cursor") or "0")
        limit = int(call.query("limit") or str(AUDIT_PAGE))
    except ValueError:
        raise Problem(400, "cursor and limit are numbers") from None
    if offset < 0 or not 1 <= limit <= 1000:
        raise Problem(400, "limit: 1-1000; cursor: from nextCursor")
    filters = {k: v for k in ("event", "principal", "repository") if (v := call.query(k))}
    since = call.query("since")
    engine = call.services.audit_engine
    if engine is not None:  # a cluster: every node's records, the cursor a row id
        records, more = await asyncio.to_thread(
            audit_db.query, engine, offset, filters, since, limit
        )
    else:  # one host: audit.log, the cursor a byte offset
        records, more = await asyncio.to_thread(
            read_audit, call.services.audit_path, offset, filters, since, limit
        )
    items = []
    for r in records:
        detail = r.get("detail")
        items.append(
            AuditRecord(
                ts=str(r.get("ts", "")),
                event=str(r.get("event", "")),
                principal=r.get("principal"),
                client=r.get("client"),
                repository=r.get("repository"),
                outcome=r.get("outcome"),
                detail=detail if isinstance(detail, dict) else {},
                node=r.get("node"),
            )
        )
    page = AuditPage(items=items, nextCursor=str(more) if more is not None else None)
    return json_response(page.model_dump())


OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        "/api/v1/keys",
        list_keys,
        "Token signing keys",
        "portway",
        "settings",
        responses={200: (Keys, False)},
    ),
    Operation(
        "POST",
        "/api/v1/keys/rotate",
        rotate_key,
        "Make a new signing key",
        "portway",
        "settings",
        responses={201: (Rotated, False)},
    ),
    Operation(
        "DELETE",
        "/api/v1/keys/{kid}",
        remove_key,
        "Stop accepting a key's tokens",
        "portway",
        "settings",
        responses={204: (None, False)},
    ),
    Operation(
        "GET",
        "/api/v1/audit",
        audit,
        "Audit records, oldest first",
        "portway",
        "audit",
        responses={200: (AuditPage, False)},
        query=(
            Param("event", "e.g. user.add"),
            Param("principal", "who acted"),
            Param("repository", "repository name"),
            Param("since", "ISO 8601 UTC time, e.g. 2026-01-01T00:00:00Z"),
            Param("cursor", "nextCursor of the previous page"),
            Param("limit", "1-1000", {"type": "integer", "minimum": 1, "maximum": 1000}),
        ),
    ),
]
