"""`portway repo list|show`: repositories as configured, with what they hold."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from portway.config import load_settings
from portway.http.context import AppContext
from portway.maintenance.proxy_state import read_state


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("repo", help="list and show repositories")
    p.add_argument("--config", type=Path, help="TOML configuration file (default: embedded)")
    rs = p.add_subparsers(dest="repo_command", required=True, metavar="ACTION")
    rs.add_parser("list", help="one line per repository").set_defaults(func=list_repos)
    show = rs.add_parser("show", help="one repository in detail (JSON)")
    show.add_argument("name")
    show.set_defaults(func=show_repo)
    for action in rs.choices.values():
        action.add_argument("--config", type=Path, default=argparse.SUPPRESS)


@contextmanager
def _context(args: argparse.Namespace) -> Iterator[AppContext]:
    """Repositories over the data directory, without security: reading them must not create
    the admin account (its first password is only ever shown by `portway serve`)."""
    from portway.http.app import build_context, open_stores
    from portway.http.context import AllowAll

    settings = load_settings(args.config)
    meta, blobs = open_stores(settings)
    try:
        yield build_context(settings, meta, blobs, AllowAll())
    finally:
        meta.close()


def _images(ctx: AppContext, name: str) -> list[str]:
    """What a repository holds: a hosted one's images, a proxy's cached ones, a group's merged."""
    return asyncio.run(ctx.repos[name].catalog(None, None))


def list_repos(args: argparse.Namespace) -> int:
    with _context(args) as ctx:
        print(f"{'NAME':<32} {'TYPE':<7} {'PATH-ROUTING':<12} {'POLICY':<12} IMAGES")
        for cfg in ctx.settings.repository:
            print(
                f"{cfg.name:<32} {cfg.type:<7} {str(cfg.path_routing).lower():<12} "
                f"{cfg.write_policy:<12} {len(_images(ctx, cfg.name))}"
            )
    return 0


def show_repo(args: argparse.Namespace) -> int:
    with _context(args) as ctx:
        cfg = ctx.settings.repo(args.name)
        if cfg is None:
            print(f"portway: no repository named {args.name!r}")
            return 1
        info = {
            **cfg.model_dump(mode="json", exclude_none=True, exclude={"remote_password"}),
            "images": _images(ctx, cfg.name),
            "routes": _routes_of(ctx, cfg.name),
        }
        if cfg.type == "proxy":
            info["upstream"] = read_state(ctx.settings.server.data_dir, cfg.name) or {
                "blocked": False,
                "note": "no state published yet (server not running or upstream not used)",
            }
    print(json.dumps(info, indent=2))
    return 0


def _routes_of(ctx: AppContext, name: str) -> list[str]:
    s = ctx.settings
    out = [f"http://{s.server.listen}/repository/{name}/v2/"]
    cfg = s.repo(name)
    if cfg is not None and cfg.path_routing:
        out.append(f"{s.server.listen}/{name}/<image>")
    out += [f"connector {c.listen}" for c in s.connector if c.repository == name]
    out += [f"host {h.name}" for h in s.host if h.repository == name]
    return out
