"""Connectors and host mappings (`/api/v1/connectors`, `/api/v1/hosts`): list, create, read,
replace, delete, with `ETag` on every answer and `If-Match` honoured on change (412 when the
definition changed since it was read). Those the configuration file declares are listed as
`managedBy: file` and refused for change (409). A connector made here listens on every worker
of every node within about a second (ADR 28); its `state` says whether the worker that
answered listens on it, and `nodes` what every node's workers say (ADR 32)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

from portway.api.problems import Problem, check_if_match
from portway.api.routing import Call, Operation, json_response, no_content
from portway.config import ConnectorConfig, HostConfig
from portway.db.access import Kind
from portway.db.connector_states import NodeView
from portway.repos.access import AccessEntry

CONNECTORS = "/api/v1/connectors"
HOSTS = "/api/v1/hosts"
SETTLE = 2.0  # seconds a create waits for this worker to listen on the new connector
State = Literal["listening", "pending", "failed", "proxy"]


class NodeAnswer(BaseModel):
    node: str  # host name and main listener
    state: Literal["listening", "failed"]
    detail: str | None = None
    updated: str  # when that node last wrote its view (ISO 8601)


class ConnectorAnswer(BaseModel):
    listen: str
    managedBy: Literal["file", "api"]
    revision: int
    etag: str
    state: State  # on the worker that answered; "proxy": served_by = "proxy"
    detail: str | None = None
    # Every node's view seen within the last 30 s (served_by = "portway"; None while the
    # cluster's copy cannot be read); a node that is not listed does not listen on it.
    nodes: list[NodeAnswer] | None = None
    definition: dict[str, Any]


class ConnectorList(BaseModel):
    items: list[ConnectorAnswer]


class HostAnswer(BaseModel):
    name: str
    managedBy: Literal["file", "api"]
    revision: int
    etag: str
    definition: dict[str, Any]


class HostList(BaseModel):
    items: list[HostAnswer]


Views = dict[str, list[NodeView]] | None


def _answer(call: Call, entry: AccessEntry, views: Views = None) -> dict[str, Any]:
    definition = entry.config.model_dump(mode="json", exclude_none=True)
    if isinstance(entry.config, HostConfig):
        return HostAnswer(
            name=entry.key, managedBy=entry.managed_by, revision=entry.revision,
            etag=entry.etag, definition=definition,
        ).model_dump()  # fmt: skip
    state: State = "proxy"
    detail = None
    nodes = None
    if entry.config.served_by == "portway":
        found, detail = call.services.access.listeners.get(entry.key, ("pending", None))
        state = (
            "listening" if found == "listening" else "failed" if found == "failed" else "pending"
        )
        if views is not None:
            nodes = [_node(v) for v in views.get(entry.key, ())]
    return ConnectorAnswer(
        listen=entry.key, managedBy=entry.managed_by, revision=entry.revision, etag=entry.etag,
        state=state, detail=detail, nodes=nodes, definition=definition,
    ).model_dump()  # fmt: skip


def _node(view: NodeView) -> NodeAnswer:
    state: Literal["listening", "failed"] = "listening" if view.state == "listening" else "failed"
    updated = datetime.fromtimestamp(view.updated, UTC).isoformat()
    return NodeAnswer(node=view.node, state=state, detail=view.detail, updated=updated)


async def _views(call: Call, kind: Kind) -> Views:
    return await call.services.access.node_views() if kind == "connector" else None


def _key(call: Call, kind: Kind) -> str:
    key = call.path("listen" if kind == "connector" else "name")
    return key.lower() if kind == "host" else key


def _checked(call: Call, kind: Kind) -> AccessEntry:
    key = _key(call, kind)
    entry = call.services.access.entry(kind, key)
    if entry is None:
        raise Problem(404, f"no {kind} {key!r}")
    check_if_match(call.request.headers.get("If-Match"), entry.etag, f"{kind} {key!r}")
    return entry


def _location(kind: Kind, key: str) -> str:
    return f"{CONNECTORS if kind == 'connector' else HOSTS}/{key}"


async def _settled(call: Call, listen: str) -> None:
    """Wait (a little) until this worker listens on a new connector, or could not."""
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline and listen not in call.services.access.listeners:
        await asyncio.sleep(0.02)


def _list(kind: Kind) -> Any:
    async def handler(call: Call) -> web.StreamResponse:
        views = await _views(call, kind)
        items = [_answer(call, e, views) for e in call.services.access.entries(kind)]
        return json_response({"items": items})

    return handler


async def create(call: Call) -> web.StreamResponse:
    config: ConnectorConfig | HostConfig = call.body
    entry = await call.services.access.create(config, actor=call.actor)
    if isinstance(config, ConnectorConfig) and config.served_by == "portway":
        await _settled(call, entry.key)
    headers = {"ETag": entry.etag, "Location": _location(entry.kind, entry.key)}
    return json_response(_answer(call, entry, await _views(call, entry.kind)), 201, headers)


def _read(kind: Kind) -> Any:
    async def handler(call: Call) -> web.StreamResponse:
        entry = _checked(call, kind)
        views = await _views(call, kind)
        return json_response(_answer(call, entry, views), headers={"ETag": entry.etag})

    return handler


def _replace(kind: Kind) -> Any:
    async def handler(call: Call) -> web.StreamResponse:
        entry = _checked(call, kind)
        config: ConnectorConfig | HostConfig = call.body
        if (config.listen if isinstance(config, ConnectorConfig) else config.name) != entry.key:
            field = "listen" if kind == "connector" else "name"
            raise Problem(400, f"{field}: cannot change; delete and create instead")
        expected = entry.revision if "If-Match" in call.request.headers else None
        new = await call.services.access.replace(config, actor=call.actor, expected=expected)
        views = await _views(call, kind)
        return json_response(_answer(call, new, views), headers={"ETag": new.etag})

    return handler


def _delete(kind: Kind) -> Any:
    async def handler(call: Call) -> web.StreamResponse:
        entry = _checked(call, kind)
        expected = entry.revision if "If-Match" in call.request.headers else None
        await call.services.access.delete(kind, entry.key, actor=call.actor, expected=expected)
        return no_content()

    return handler


def _operations(kind: Kind) -> list[Operation]:
    base, model = (CONNECTORS, ConnectorConfig) if kind == "connector" else (HOSTS, HostConfig)
    one = f"{base}/{{{'listen' if kind == 'connector' else 'name'}}}"
    answer, listing = (
        (ConnectorAnswer, ConnectorList) if kind == "connector" else (HostAnswer, HostList)
    )
    what = "connector" if kind == "connector" else "host mapping"
    return [
        Operation("GET", base, _list(kind), f"Every {what}, with who manages each", "portway",
                  "repositories", responses={200: (listing, False)}),
        Operation("POST", base, create, f"Create a {what} (live at once)", "portway",
                  "repositories", body=model, responses={201: (answer, False)}),
        Operation("GET", one, _read(kind), f"A {what} (ETag)", "portway", "repositories",
                  responses={200: (answer, False)}),
        Operation("PUT", one, _replace(kind), f"Replace a {what} (If-Match)", "portway",
                  "repositories", body=model, responses={200: (answer, False)}),
        Operation("DELETE", one, _delete(kind), f"Delete a {what} (If-Match)", "portway",
                  "repositories", responses={204: (None, False)}),
    ]  # fmt: skip


OPERATIONS: list[Operation] = [*_operations("connector"), *_operations("host")]
