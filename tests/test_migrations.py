"""Schema migrations: a database made by an older Portway is brought up to date in place."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, create_engine, inspect, select, text

from portway.auth.passwords import FAST_TEST_PARAMS, PasswordHasher
from portway.auth.store import UserStore
from portway.db import schema
from portway.db.migrations import AFTER_BASELINE, HEAD, LEGACY_STEPS, migrate


def _before_alembic(conn: Connection) -> None:
    """What a database of a release before Alembic lacks: alembic_version and the tables of
    the revisions after the baseline."""
    conn.execute(text("DROP TABLE alembic_version"))
    for table in AFTER_BASELINE:
        conn.execute(text(f"DROP TABLE {table}"))


def test_version_1_database_gains_the_security_generation(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    migrate(engine)
    store = UserStore(engine, PasswordHasher(FAST_TEST_PARAMS))
    store.add_user("alice", "pw")
    # Make it look like a database from before step 2.
    with engine.begin() as conn:
        _before_alembic(conn)
        conn.execute(text("DROP TABLE security_state"))
        conn.execute(schema.schema_version.delete().where(schema.schema_version.c.version >= 2))
    assert migrate(engine) == HEAD
    assert "security_state" in inspect(engine).get_table_names()
    with engine.connect() as conn:
        versions = [row[0] for row in conn.execute(select(schema.schema_version.c.version))]
    assert versions == [version for version, _ in LEGACY_STEPS]
    assert store.generation() == 0
    store.disable_user("alice")
    assert store.generation() == 1
    assert store.authenticate("alice", "pw") is None
    assert migrate(engine) == HEAD  # a second run changes nothing
    assert store.generation() == 1


def test_version_2_database_gains_the_failed_login_counts(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    migrate(engine)
    with engine.begin() as conn:
        _before_alembic(conn)
        conn.execute(text("DROP TABLE login_failures"))
        conn.execute(schema.schema_version.delete().where(schema.schema_version.c.version >= 3))
    assert migrate(engine) == HEAD
    assert "login_failures" in inspect(engine).get_table_names()
    from portway.auth.ratelimit import LoginLimiter

    limiter = LoginLimiter(engine, max_failures=1)
    assert limiter.failure("alice", "192.0.2.1") is not None
