"""Admin pages (admin privileges only; anyone else gets 403): repositories (create a hosted
one), health (what /readyz says). Users and roles: admin_users.py; cleanup policies and
usage: admin_lifecycle.py."""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from portway.config import RepositoryConfig
from portway.repos.admin import RepositoryRefused
from portway.ui.web import Page, Refusal, page

POLICIES = ("allow", "allow_once", "allow_latest", "deny")


def _repo_rows(p: Page) -> list[dict[str, object]]:
    return [
        {"name": e.config.name, "type": e.config.type, "managed_by": e.managed_by,
         "path_routing": e.config.path_routing, "write_policy": e.config.write_policy}
        for e in p.services.repositories.entries()
    ]  # fmt: skip


@page
async def repositories(p: Page) -> web.StreamResponse:
    p.require_admin("repositories")
    await p.services.repositories.refresh()
    return p.render("admin_repositories.html", rows=_repo_rows(p), policies=POLICIES,
                    error=None, created=p.request.query.get("created"))  # fmt: skip


@page
async def create_repository(p: Page) -> web.StreamResponse:
    p.require_admin("repositories")
    form = await p.form()
    policy = form.get("write_policy", "allow")
    error: str | None = None
    try:
        config = RepositoryConfig.model_validate({
            "name": form.get("name", "").strip(), "type": "hosted", "path_routing": True,
            "write_policy": policy, "anonymous_pull": form.get("anonymous_pull") == "on",
        })  # fmt: skip
        entry = await p.services.repositories.create(config, actor=p.user or "anonymous")
    except ValidationError as exc:
        error = "; ".join(str(e["msg"]) for e in exc.errors())
    except RepositoryRefused as exc:
        error = exc.message
    if error is not None:
        return p.render("admin_repositories.html", 400, rows=_repo_rows(p), policies=POLICIES,
                        error=error, created=None)  # fmt: skip
    raise web.HTTPSeeOther(f"/ui/admin/repositories?created={entry.config.name}")


@page
async def health(p: Page) -> web.StreamResponse:
    p.require_admin("settings")
    from portway.http.observe import OBSERVE_KEY

    if OBSERVE_KEY not in p.request.app:
        raise Refusal(404, "health checks are not installed")
    state = p.request.app[OBSERVE_KEY].health
    return p.render("admin_health.html", ready=state.ready, checks=state.report())
