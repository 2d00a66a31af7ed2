"""Cleanup policies (the file's `[[cleanup_policy]]` tables, the repositories that use each, a
dry run of one: what `portway cleanup --dry-run --policy NAME` would remove now) and storage
usage per repository and blob store. Admin privilege `repositories`; the services are
lifecycle/services.py's, the ones the CLI's cleanup runs."""

from __future__ import annotations

from aiohttp import web

from portway.ui.web import Page, Refusal, page

SHOWN = 1000  # rows of a dry run listed on the page (the counts are whole)


@page
async def policies(p: Page) -> web.StreamResponse:
    p.require_admin("repositories")
    return p.render("admin_cleanup.html", views=p.services.lifecycle.policies())


@page
async def dry_run(p: Page) -> web.StreamResponse:
    p.require_admin("repositories")
    name = p.request.match_info["policy"]
    view = p.services.lifecycle.policy(name)
    if view is None:
        raise Refusal(404, f"no cleanup policy {name!r} ([[cleanup_policy]] in the file)")
    report = await p.services.lifecycle.dry_run(name)
    return p.render("admin_cleanup_dry_run.html", view=view, tags=report.tags[:SHOWN],
                    manifests=report.manifests[:SHOWN], tag_count=len(report.tags),
                    manifest_count=len(report.manifests), shown=SHOWN)  # fmt: skip


@page
async def usage(p: Page) -> web.StreamResponse:
    p.require_admin("repositories")
    return p.render("admin_usage.html", usage=await p.services.lifecycle.usage())
