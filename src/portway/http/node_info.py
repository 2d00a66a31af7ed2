"""`GET /readyz?node=1`: the readiness report plus what this node is (portway.observe.node),
for an administrator (Basic credentials) when security is on."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from portway.auth.errors import AuthError
from portway.http.context import CONTEXT_KEY
from portway.http.forwarded import client_address
from portway.observe.node import node_report

ADMIN_NEEDED = "node details need an administrator's credentials (Basic)"


async def node_section(request: web.Request) -> dict[str, Any]:
    """The node's report, or why not; never an error answer (the node may be unready: its
    database unreachable, so no password can be checked)."""
    try:
        return await _section(request)
    except Exception as exc:  # a health answer reports, it does not fail
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return {"refused": f"node details unavailable: {first[:200]}"}


async def _section(request: web.Request) -> dict[str, Any]:
    ctx = request.app[CONTEXT_KEY]
    auth = getattr(ctx.authorizer, "auth", None)  # None: security off, nothing to guard
    ring = None
    if auth is not None:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return {"refused": ADMIN_NEEDED}
        client = client_address(request, ctx.trusted)
        pool = getattr(ctx.authorizer, "pool", None)  # the password checks' own threads
        loop = asyncio.get_running_loop()
        try:
            principal = await loop.run_in_executor(pool, auth.authenticate_basic, header, client)
        except AuthError:
            return {"refused": ADMIN_NEEDED}
        if not principal.is_admin:
            return {"refused": ADMIN_NEEDED}
        ring = auth.tokens.keys
    return await asyncio.to_thread(node_report, ctx.settings, ring)
