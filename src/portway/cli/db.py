"""`portway db upgrade`: bring the metadata database to the newest schema (Alembic)."""

from __future__ import annotations

import argparse
from pathlib import Path


def db_upgrade(args: argparse.Namespace) -> int:
    from portway.db.engine import engines_for
    from portway.db.migrations import HEAD, current_revision, migrate

    if args.url:
        url = args.url
    else:
        from portway.config import load_settings

        settings = load_settings(args.config)
        url = f"sqlite:///{settings.server.data_dir / 'portway.db'}"
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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = sub.add_parser("db", help="the metadata database")
    ds = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    p = ds.add_parser("upgrade", help="migrate the metadata database to the newest schema")
    p.add_argument("--config", type=Path, help="TOML configuration file (default: embedded)")
    p.add_argument("--url", help="database URL instead of the configured one: sqlite:///PATH "
                   "or postgresql://user@host:port/database")
    p.set_defaults(func=db_upgrade)
