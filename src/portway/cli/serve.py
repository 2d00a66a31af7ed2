"""`portway serve`: run the registry."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from portway.config import Settings, load_settings
from portway.observe.node import without_password


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the registry")
    p.add_argument("--config", type=Path, help="TOML configuration file (default: embedded)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes sharing the ports (default: one per CPU)",
    )
    p.add_argument("--data-dir", type=Path, default=None, help="data directory")
    p.set_defaults(func=run)


def prepare(settings: Settings) -> tuple[bool, str | None]:
    """Create the database, the repositories and the admin once, before any worker starts.
    Returns (first start?, the admin's new password when it was just created)."""
    from portway.compose import Portway

    sqlite = _sqlite_file(settings)
    first = not sqlite.exists() if sqlite is not None else _server_is_empty(settings)
    with Portway(settings) as root:
        _authorizer, password = root.security()
        root.context()
    return first, password


def _server_is_empty(settings: Settings) -> bool:
    """Does the [database] url's database hold no registry yet (no repositories table)?"""
    from sqlalchemy import create_engine, inspect

    from portway.db.engine import postgres_url

    engine = create_engine(postgres_url(settings.database.url))
    try:
        return not inspect(engine).has_table("repositories")
    except Exception:  # unreachable: opening the store says why, in the operator's words
        return False
    finally:
        engine.dispose()


def _sqlite_file(settings: Settings) -> Path | None:
    """The embedded database's file, or None for a database server ([database] url)."""
    url = settings.database.url
    if not url:
        return settings.server.data_dir / "portway.db"
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None


def data_notice(settings: Settings, config: Path | None, created: bool, first: bool) -> list[str]:
    """Say so when this start made a new registry, so a wrong data_dir is noticed at once
    (a relative one in a config file is relative to that file's folder)."""
    data_dir = settings.server.data_dir
    if created:
        head = f"Created a new data directory {data_dir}: this is a new, empty registry."
    elif first and _sqlite_file(settings) is None:
        url = without_password(settings.database.url)
        head = f"New registry: the database {url} held no registry yet."
    elif first:
        head = f"New registry in {data_dir} (it held no portway.db)."
    else:
        return []
    where = f"data_dir in {config}" if config is not None else "[server] data_dir"
    return [
        head,
        f"  Not the one you meant? Stop, then set {where} (relative paths count from the "
        "config file's folder) or pass --data-dir.",
    ]


def banner(
    settings: Settings,
    first: bool,
    admin_password: str | None = None,
    notice: list[str] | None = None,
) -> str:
    host, port = settings.server.listen.rsplit(":", 1)
    shown = "localhost" if host in ("0.0.0.0", "::", "[::]") else host
    lines = [f"Portway serving on {settings.server.listen} (data: {settings.server.data_dir})"]
    lines += notice or []
    for repo in settings.repository:
        lines.append(f"  repository {repo.name} ({repo.type})")
        lines.append(f"    Nexus path:       http://{shown}:{port}/repository/{repo.name}/v2/")
        if repo.path_routing:
            lines.append(f"    repository path:  {shown}:{port}/{repo.name}/<image>:<tag>")
    for conn in settings.connector:
        if conn.repository:
            lines.append(f"  connector {conn.listen} -> {conn.repository} ({conn.served_by})")
    if admin_password:
        lines += [
            "",
            f"Created user 'admin' with password: {admin_password}",
            f"  (also in {settings.server.data_dir / 'admin.password'}; shown only this once)",
        ]
    if not settings.security.enabled:
        lines.append("Security is off ([security] enabled = false): anyone may push and pull.")
    if first:
        routed = next((r.name for r in settings.repository if r.path_routing), None)
        if routed:
            ref = f"{shown}:{port}/{routed}/hello:1.0"
            login = (
                [f"  docker login {shown}:{port} -u admin   # password above"]
                if settings.security.enabled
                else []
            )
            creds = " --dest-creds admin:PASSWORD" if settings.security.enabled else ""
            podman_login = (
                [f"  podman login --tls-verify=false {shown}:{port} -u admin"]
                if settings.security.enabled
                else []
            )
            lines += [
                "",
                "Try it (loopback addresses count as insecure registries for Docker):",
                *login,
                f"  docker pull hello-world && docker tag hello-world {ref} && docker push {ref}",
                f"  docker pull {ref}",
                "Podman and skopeo need --tls-verify=false for plain HTTP, even on loopback:",
                *podman_login,
                f"  podman pull --tls-verify=false {ref}",
                f"  skopeo copy --dest-tls-verify=false{creds} docker-archive:img.tar "
                f"docker://{ref}",
            ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from portway.compose import Portway
    from portway.http import reload
    from portway.http.server import serve

    settings = load_settings(args.config)
    if args.config is not None:  # what SIGHUP reads again, in this process and its workers
        os.environ[reload.ENV] = str(args.config.resolve())
    server = settings.server
    update: dict[str, object] = {}
    if args.workers is not None:
        update["workers"] = args.workers
    if args.data_dir is not None:
        update["data_dir"] = args.data_dir.resolve()
    if update:
        settings = settings.model_copy(update={"server": server.model_copy(update=update)})
    created = not settings.server.data_dir.exists()
    first, password = prepare(settings)
    notice = data_notice(settings, args.config, created, first)
    print(banner(settings, first, password, notice), flush=True)
    return serve(settings, settings.worker_count, Portway)
