"""Mounts the web UI on the HTTP app: /ui/... and a redirect from / (http/app.py calls
`install` before the registry's catch-all). No path a Docker client uses is taken."""

from __future__ import annotations

from aiohttp import web

from portway.ui import (
    admin,
    admin_access,
    admin_jobs,
    admin_lifecycle,
    admin_users,
    browse,
    bulk,
    login,
)
from portway.ui.web import HERE, SESSIONS_KEY, SessionKeeper


async def _root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


def install(app: web.Application) -> None:
    app[SESSIONS_KEY] = SessionKeeper()
    r = app.router
    r.add_get("/", _root)
    r.add_get("/ui", _root)
    r.add_get("/ui/", browse.repositories)
    r.add_get("/ui/login", login.login_form)
    r.add_post("/ui/login", login.login)
    r.add_post("/ui/logout", login.logout)
    r.add_get("/ui/r/{repo}/", browse.images)
    r.add_get("/ui/r/{repo}/tags", browse.tags)
    r.add_get("/ui/r/{repo}/manifest", browse.manifest)
    r.add_get("/ui/r/{repo}/delete", browse.confirm_delete)
    r.add_post("/ui/r/{repo}/delete", browse.delete_tag)
    r.add_get("/ui/admin/repositories", admin.repositories)
    r.add_post("/ui/admin/repositories", admin.create_repository)
    r.add_get("/ui/r/{repo}/bulk-delete", bulk.bulk_form)
    r.add_post("/ui/r/{repo}/bulk-delete", bulk.bulk_delete)
    r.add_get("/ui/admin/users", admin_users.users)
    r.add_post("/ui/admin/users", admin_users.create_user)
    r.add_post("/ui/admin/roles", admin_users.create_role)
    r.add_get("/ui/admin/users/{name}", admin_users.user)
    r.add_post("/ui/admin/users/{name}/roles", admin_users.set_roles)
    r.add_post("/ui/admin/users/{name}/state", admin_users.set_state)
    r.add_get("/ui/admin/cleanup", admin_lifecycle.policies)
    r.add_get("/ui/admin/cleanup/{policy}", admin_lifecycle.dry_run)
    r.add_get("/ui/admin/usage", admin_lifecycle.usage)
    r.add_get("/ui/admin/access", admin_access.access_page)
    r.add_post("/ui/admin/access", admin_access.create)
    r.add_post("/ui/admin/access/delete", admin_access.delete)
    r.add_get("/ui/admin/jobs", admin_jobs.jobs)
    r.add_get("/ui/admin/jobs/{name}", admin_jobs.job)
    r.add_post("/ui/admin/jobs/{name}/run", admin_jobs.run_now)
    r.add_post("/ui/admin/jobs/{name}/stop", admin_jobs.stop)
    r.add_get("/ui/admin/jobs/{name}/runs/{run}", admin_jobs.run)
    r.add_get("/ui/admin/health", admin.health)
    r.add_static("/ui/static/", HERE / "static", append_version=True)
