"""Every admin API operation, mounted on the HTTP app (http/app.py calls `install`)."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import lru_cache

from aiohttp import web

from portway.api import (
    jobs_api,
    nexus_components,
    nexus_repos,
    nexus_security,
    portway_access,
    portway_admin,
    portway_repos,
    portway_tags,
)
from portway.api.openapi import document
from portway.api.routing import Call, Operation
from portway.api.routing import install as mount


async def openapi_json(call: Call) -> web.StreamResponse:
    return web.Response(body=_document_bytes(), content_type="application/json")


def operations() -> list[Operation]:
    # Repository definitions are read after the set's generation (another worker's change).
    fresh = [
        replace(op, fresh=True)
        for op in (*nexus_repos.OPERATIONS, *portway_repos.OPERATIONS, *portway_access.OPERATIONS)
    ]
    return [
        *fresh,
        *nexus_security.OPERATIONS,
        *nexus_components.OPERATIONS,
        *portway_tags.OPERATIONS,
        *portway_admin.OPERATIONS,
        *jobs_api.OPERATIONS,
    ]


@lru_cache(maxsize=1)
def _document_bytes() -> bytes:
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("portway")
    except PackageNotFoundError:
        release = "0"
    return json.dumps(document([*operations(), OPENAPI], release)).encode()


OPENAPI = Operation(
    "GET",
    "/api/openapi.json",
    openapi_json,
    "This document",
    "meta",
    None,
    responses={200: (None, False)},
)


async def _public(request: web.Request) -> web.StreamResponse:
    return web.Response(body=_document_bytes(), content_type="application/json")


def install(app: web.Application) -> None:
    mount(app, operations())
    app.router.add_get("/api/openapi.json", _public)
