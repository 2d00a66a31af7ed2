"""Schema migrations: an ordered list of steps, each applied once, recorded in schema_version.

Every step is plain SQLAlchemy Core against a Connection inside one transaction, so the same
steps run on SQLite and PostgreSQL. Add a step at the end; never edit a released one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Connection, Engine, inspect, select

from portway.db import schema


def _v1_initial(conn: Connection) -> None:
    load_table_modules()
    schema.metadata.create_all(conn)


def load_table_modules() -> None:
    """Import every module that declares tables on the shared metadata."""
    import importlib

    for name in ("portway.db.auth_schema",):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def _v2_security_state(conn: Connection) -> None:
    load_table_modules()
    from portway.db.auth_schema import security_state

    security_state.create(conn, checkfirst=True)  # a fresh database has it from step 1


def _v3_login_failures(conn: Connection) -> None:
    load_table_modules()
    from portway.db.auth_schema import login_failures

    login_failures.create(conn, checkfirst=True)  # a fresh database has it from step 1


MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _v1_initial),
    (2, _v2_security_state),
    (3, _v3_login_failures),
]


def migrate(engine: Engine) -> int:
    """Bring the database to the newest schema; safe to run from several workers at once."""
    with engine.begin() as conn:
        if not inspect(conn).has_table("schema_version"):
            schema.schema_version.create(conn, checkfirst=True)
        done = {row[0] for row in conn.execute(select(schema.schema_version.c.version))}
        for version, step in MIGRATIONS:
            if version in done:
                continue
            step(conn)
            conn.execute(
                schema.schema_version.insert().values(version=version, applied=time.time())
            )
    return MIGRATIONS[-1][0]
