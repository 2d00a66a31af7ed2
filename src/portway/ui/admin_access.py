"""Connectors and host mappings (admin privilege `repositories`, as /api/v1/connectors and
/api/v1/hosts): every one with who manages it and, for a connector Portway serves, whether
this worker listens on it and what every node says (ADR 32); create one (live at once, ADR 28);
delete one made here. The pages
call `AccessAdmin` (repos/access.py), what the API calls; the file's are shown, not edited."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from pydantic import ValidationError

from portway.config import ConnectorConfig, HostConfig
from portway.db.connector_states import NodeView
from portway.repos.access import AccessAdmin
from portway.repos.admin import RepositoryRefused
from portway.ui.web import Page, Refusal, page


def _access(p: Page) -> AccessAdmin:
    p.require_admin("repositories")
    return p.services.access


def _nodes(views: dict[str, list[NodeView]] | None, listen: str) -> list[str]:
    if views is None:
        return ["the cluster's view cannot be read now"]
    return [f"{v.node}: {v.state}" + (f" ({v.detail})" if v.detail else "")
            for v in views.get(listen, ())]  # fmt: skip


async def _rows(p: Page, access: AccessAdmin) -> dict[str, Any]:
    views = await access.node_views()
    connectors = []
    for e in access.entries("connector"):
        assert isinstance(e.config, ConnectorConfig)
        state, detail, nodes = "behind a reverse proxy", None, []
        if e.config.served_by == "portway":
            found, detail = access.listeners.get(e.key, ("pending", None))
            state, nodes = str(found), _nodes(views, e.key)
        connectors.append({"listen": e.key, "repository": e.config.repository,
                           "served_by": e.config.served_by, "managed_by": e.managed_by,
                           "state": state, "detail": detail, "nodes": nodes})  # fmt: skip
    hosts = [
        {"name": e.key, "repository": e.config.repository, "managed_by": e.managed_by}
        for e in access.entries("host")
    ]
    names = sorted(d.name for d in p.ctx.snapshot.definitions)
    return {"connectors": connectors, "hosts": hosts, "repositories": names}


async def _page(p: Page, access: AccessAdmin, status: int = 200, error: str | None = None
                ) -> web.Response:  # fmt: skip
    q = p.request.query
    done = {k: q[k] for k in ("created", "deleted") if q.get(k)}
    return p.render("admin_access.html", status, error=error, done=done, **await _rows(p, access))


@page
async def access_page(p: Page) -> web.StreamResponse:
    access = _access(p)
    await p.services.repositories.refresh()
    return await _page(p, access)


def _message(exc: ValidationError) -> str:
    return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())


@page
async def create(p: Page) -> web.StreamResponse:
    access = _access(p)
    form = await p.form()
    kind = form.get("kind", "")
    repository = form.get("repository", "").strip() or None
    try:
        config: ConnectorConfig | HostConfig
        if kind == "connector":
            config = ConnectorConfig(listen=form.get("listen", "").strip(),
                                     repository=repository,
                                     served_by="proxy" if form.get("served_by") == "proxy"
                                     else "portway")  # fmt: skip
        elif kind == "host":
            config = HostConfig(name=form.get("name", "").strip(), repository=repository)
        else:
            raise Refusal(400, "kind: connector or host")
        entry = await access.create(config, actor=p.user or "anonymous")
    except ValidationError as exc:
        return await _page(p, access, 400, _message(exc))
    except RepositoryRefused as exc:
        return await _page(p, access, exc.status if 400 <= exc.status < 500 else 400, exc.message)
    raise web.HTTPSeeOther("/ui/admin/access?" + urlencode({"created": entry.key}))


@page
async def delete(p: Page) -> web.StreamResponse:
    access = _access(p)
    form = await p.form()
    kind, key = form.get("kind", ""), form.get("key", "")
    if kind not in ("connector", "host") or not key:
        raise Refusal(400, "name a connector or a host mapping")
    try:
        await access.delete("connector" if kind == "connector" else "host", key,
                            actor=p.user or "anonymous")  # fmt: skip
    except RepositoryRefused as exc:
        return await _page(p, access, exc.status if 400 <= exc.status < 500 else 400, exc.message)
    raise web.HTTPSeeOther("/ui/admin/access?" + urlencode({"deleted": key}))
