"""Schema migrations: Alembic revisions (portway/db/revisions), run programmatically.

`migrate(engine)` brings any database to `HEAD` in one transaction that holds the write lock
(SQLite's `BEGIN IMMEDIATE`, a PostgreSQL advisory lock), so several workers or nodes starting
at once migrate it once. A database that is at HEAD already costs one query and no Alembic
import: server starts stay as fast as before. A database made before Alembic (its
`schema_version` table records the hand-made steps below) is brought to step 3 by those steps,
stamped at the baseline revision 0001 (that schema), then upgraded (ADR 0019).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection, Engine, inspect, select, text
from sqlalchemy.exc import DBAPIError

from portway.db import schema
from portway.db.dialect import dialect_for

HEAD = "0014"  # the newest revision in portway/db/revisions/versions
BASELINE = "0001"  # the schema the hand-made steps leave
REVISIONS = Path(__file__).with_name("revisions")


# Tables that revisions after the baseline add: the hand-made step 1 must not make them.
AFTER_BASELINE = frozenset(
    {"leases", "signing_keys", "audit_events", "proxy_breakers", "proxy_negative"}
    | {"gc_candidates", "gc_holds", "blob_states", "manifest_pulls"}  # 0005, 0006
    | {"job_runs", "job_schedule"}  # 0008
    | {"access_definitions"}  # 0009
    | {"shared_secrets"}  # 0011
    | {"connector_states"}  # 0014
)


def _v1_initial(conn: Connection) -> None:
    load_table_modules()
    baseline = [t for t in schema.metadata.sorted_tables if t.name not in AFTER_BASELINE]
    schema.metadata.create_all(conn, tables=baseline)


def load_table_modules() -> None:
    """Import every module that declares tables on the shared metadata."""
    import importlib

    for name in (
        "portway.db.auth_schema",
        "portway.db.shared_schema",
        "portway.db.repositories",
        "portway.db.access",
        "portway.db.lifecycle",
        "portway.db.browse",
        "portway.db.jobs",
    ):
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


# The hand-made steps from before Alembic: only for databases made by those releases.
LEGACY_STEPS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _v1_initial),
    (2, _v2_security_state),
    (3, _v3_login_failures),
]


def current_revision(conn: Connection) -> str | None:
    """The database's Alembic revision, None when it has none (new, or made before Alembic)."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _at_head(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    except DBAPIError:
        return False  # no alembic_version table yet


def migrate(engine: Engine) -> str:
    """Bring the database to HEAD; safe to run from several workers or nodes at once.
    Returns the revision it is at."""
    if _at_head(engine):
        return HEAD
    with engine.begin() as conn:
        dialect_for(conn).lock_keys(conn, ["portway:migrate"])
        tables = set(inspect(conn).get_table_names())
        if not tables:
            _create_at_head(conn)
        elif current_revision(conn) != HEAD:
            _upgrade(conn)
    return HEAD


def _create_at_head(conn: Connection) -> None:
    """An empty database: the declared tables, stamped at HEAD, without importing Alembic
    (a new data folder starts as fast as before). tests/test_migrations_alembic.py checks that
    running the revisions from nothing gives these same tables."""
    load_table_modules()
    schema.metadata.create_all(conn)
    now = time.time()
    conn.execute(
        schema.schema_version.insert(),
        [{"version": v, "applied": now} for v, _step in LEGACY_STEPS],
    )
    conn.execute(
        text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
    )
    conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": HEAD})


def _legacy_steps(conn: Connection) -> None:
    done = {row[0] for row in conn.execute(select(schema.schema_version.c.version))}
    for version, step in LEGACY_STEPS:
        if version not in done:
            step(conn)
            conn.execute(
                schema.schema_version.insert().values(version=version, applied=time.time())
            )


def _upgrade(conn: Connection) -> None:
    """Alembic from the database's revision (or from nothing, or a pre-Alembic one) to HEAD."""
    from alembic.runtime.environment import EnvironmentContext
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(REVISIONS))
    current = current_revision(conn)
    if current is None and inspect(conn).has_table("schema_version"):
        _legacy_steps(conn)  # a database from before Alembic: to step 3, which is 0001
        MigrationContext.configure(conn).stamp(script, BASELINE)
        current = BASELINE
    if current == HEAD:
        return

    def steps(rev: object, _context: object) -> object:
        return script._upgrade_revs(HEAD, rev)  # type: ignore[arg-type]

    load_table_modules()
    from alembic.config import Config

    with EnvironmentContext(Config(), script, fn=steps, destination_rev=HEAD) as env:
        env.configure(
            connection=conn,
            target_metadata=schema.metadata,
            render_as_batch=conn.dialect.name == "sqlite",  # ALTER through table copies
        )
        with env.begin_transaction():
            env.run_migrations()
