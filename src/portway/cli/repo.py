"""`portway repo list|show`: repositories as configured, with what they hold."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from portway.config import RepositoryConfig, Settings, load_settings
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
    from portway.compose import Portway
    from portway.http.context import AllowAll

    with Portway(load_settings(args.config)) as root:
        yield root.context(AllowAll())


def _images(ctx: AppContext, name: str) -> list[str]:
    """What a repository holds: a hosted one's images, a proxy's cached ones, a group's merged."""
    return asyncio.run(ctx.repos[name].catalog(None, None))


# Keys that mean something only for some kinds: `repo show` leaves the others out.
_KIND_KEYS = {
    "hosted": {"write_policy", "strict_content_types", "quota_bytes", "quota_warning"},
    "proxy": {
        "remote_url",
        "remote_username",
        "metadata_max_age",
        "negative_cache_ttl",
        "cache_foreign_layers",
        "foreign_layer_urls",
    },
    "group": {"members", "writable_member", "allow_proxy_shadowing"},
}


def _settings_of(cfg: RepositoryConfig) -> dict[str, Any]:
    foreign = set().union(*(keys for kind, keys in _KIND_KEYS.items() if kind != cfg.type))
    return cfg.model_dump(mode="json", exclude_none=True, exclude={"remote_password", *foreign})


def list_repos(args: argparse.Namespace) -> int:
    with _context(args) as ctx:
        print(f"{'NAME':<32} {'TYPE':<7} {'PATH-ROUTING':<12} {'POLICY':<12} IMAGES")
        for cfg in ctx.settings.repository:
            # Only a hosted repository has a write policy; a group's pushes follow its
            # writable member's, and a proxy takes none.
            policy = cfg.write_policy if cfg.type == "hosted" else "-"
            print(
                f"{cfg.name:<32} {cfg.type:<7} {str(cfg.path_routing).lower():<12} "
                f"{policy:<12} {len(_images(ctx, cfg.name))}"
            )
    return 0


def show_repo(args: argparse.Namespace) -> int:
    with _context(args) as ctx:
        cfg = ctx.settings.repo(args.name)
        if cfg is None:
            print(f"portway: no repository named {args.name!r}")
            return 1
        info: dict[str, Any] = {
            **_settings_of(cfg),
            "images": _images(ctx, cfg.name),
            "routes": _routes_of(ctx.settings, cfg.name),
        }
        repo: Any = ctx.repos[cfg.name]
        if cfg.type != "group":  # bytes stored, each blob counted once
            from portway.lifecycle.usage import usage_of

            info["usage"] = usage_of(repo.meta, repo.repo_id, cfg)
        note = _wildcard_note(ctx.settings)
        if note:
            info["routes_note"] = note
        if cfg.type == "proxy":
            info["upstream"] = read_state(ctx.settings.server.data_dir, cfg.name) or {
                "blocked": False,
                "note": "no state published yet (server not running or upstream not used)",
            }
    print(json.dumps(info, indent=2))
    return 0


_WILDCARDS = ("0.0.0.0", "::", "[::]", "")


def _reachable(listen: str) -> str:
    """HOST:PORT a client on this machine can use: a wildcard address is shown as 127.0.0.1."""
    host, _, port = listen.rpartition(":")
    return f"127.0.0.1:{port}" if host in _WILDCARDS else listen


def _wildcard_note(settings: Settings) -> str | None:
    listens = [settings.server.listen, *(c.listen for c in settings.connector)]
    wild = [v for v in listens if v.rpartition(":")[0] in _WILDCARDS]
    if not wild:
        return None
    return (
        f"{', '.join(wild)} listen on every address: shown as 127.0.0.1 (this machine); "
        f"other machines use this host's name ({socket.gethostname()}) or address instead"
    )


def _routes_of(settings: Settings, name: str) -> list[str]:
    main = _reachable(settings.server.listen)
    scheme = "https" if settings.server.tls else "http"
    out = [f"{scheme}://{main}/repository/{name}/v2/"]
    cfg = settings.repo(name)
    if cfg is not None and cfg.path_routing:
        out.append(f"{main}/{name}/<image>")
    for c in settings.connector:
        if c.repository != name:
            continue
        if c.served_by == "proxy":
            out.append(f"connector {c.listen} (served by the reverse proxy)")
        else:
            base = c.external_url or f"{'https' if c.tls else 'http'}://{_reachable(c.listen)}"
            out.append(f"connector {base.rstrip('/')}/v2/")
    for h in settings.host:
        if h.repository == name:
            out.append(f"host {h.external_url.rstrip('/') + '/v2/' if h.external_url else h.name}")
    return out
