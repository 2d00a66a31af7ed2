"""`portway db upgrade`: bring the metadata database to the newest schema (Alembic).
`portway audit export`: the audit log as JSON lines, every node's on a shared database."""

from __future__ import annotations

import argparse
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import TextIO


def db_upgrade(args: argparse.Namespace) -> int:
    from portway.db.engine import engines_for
    from portway.db.migrations import HEAD, current_revision, migrate

    if args.url:
        url = args.url
    else:
        from portway.config import load_settings

        settings = load_settings(args.config)
        url = settings.database.url or f"sqlite:///{settings.server.data_dir / 'portway.db'}"
    read, write = engines_for(url)
    try:
        with read.connect() as conn:
            before = current_revision(conn)
        migrate(write)
    finally:
        read.dispose()
        write.dispose()
    if before == HEAD:
        print(f"metadata database is at the newest schema ({HEAD}): nothing to do")
    else:
        print(f"metadata database upgraded from {before or 'before Alembic or empty'} to {HEAD}")
    return 0


def audit_export(args: argparse.Namespace) -> int:
    """From the database in a cluster ([database] url is PostgreSQL), else the data folder's
    audit.log; `--since` keeps records at or after an RFC 3339 time or a Unix time."""
    from portway.compose import Portway
    from portway.config import load_settings

    since = _since(args.since) if args.since else None
    out = open(args.output, "w") if args.output else sys.stdout  # noqa: SIM115
    try:
        with Portway(load_settings(args.config)) as root:
            if root.clustered:
                from portway.auth.audit_db import export

                for line in export(root.meta.engine, since):
                    out.write(line + "\n")
            else:
                _export_file(root.settings.server.data_dir / "audit.log", since, out)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _since(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _export_file(path: Path, since: float | None, out: TextIO) -> None:
    import json

    if not path.exists():
        return
    with path.open() as src:
        if since is None:
            shutil.copyfileobj(src, out)
            return
        for line in src:
            try:
                ts = json.loads(line)["ts"]
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a full disk
            if _since(ts) >= since:
                out.write(line)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="the audit log")
    aus = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    p = aus.add_parser("export", help="print the audit log as JSON lines (every node's)")
    p.add_argument("--config", type=Path, help="TOML configuration file (default: embedded)")
    p.add_argument("--since", help="only records at or after this time (RFC 3339 or Unix)")
    p.add_argument("--output", type=Path, help="write to this file instead of the terminal")
    p.set_defaults(func=audit_export)

    db = sub.add_parser("db", help="the metadata database")
    ds = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    p = ds.add_parser("upgrade", help="migrate the metadata database to the newest schema")
    p.add_argument("--config", type=Path, help="TOML configuration file (default: embedded)")
    p.add_argument("--url", help="database URL instead of the configured one: sqlite:///PATH "
                   "or postgresql://user@host:port/database")
    p.set_defaults(func=db_upgrade)
