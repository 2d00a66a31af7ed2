"""Mounts the web UI on the HTTP app: /ui/... and a redirect from / (http/app.py calls
`install` before the registry's catch-all). No path a Docker client uses is taken."""

from __future__ import annotations

from aiohttp import web

from portway.ui import admin, browse, login
from portway.ui.web import HERE


async def _root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


def install(app: web.Application) -> None:
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
    r.add_get("/ui/admin/users", admin.users)
    r.add_post("/ui/admin/users", admin.create_user)
    r.add_get("/ui/admin/health", admin.health)
    r.add_static("/ui/static/", HERE / "static", append_version=True)
