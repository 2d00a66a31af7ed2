"""The PostgreSQL fixtures: one real PostgreSQL 15 per session, a fresh database per module."""

from __future__ import annotations

import psycopg
import pytest

from support.postgres import Postgres


def test_module_database_is_fresh_and_writable(postgres: Postgres, postgres_url: str) -> None:
    assert postgres_url.startswith(f"postgresql://postgres@127.0.0.1:{postgres.port}/")
    with psycopg.connect(postgres_url, connect_timeout=10) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None and 150000 <= int(version[0]) < 160000
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (9000000000)")  # 64-bit sizes fit


def test_databases_are_separate(postgres: Postgres, postgres_url: str) -> None:
    with psycopg.connect(postgres_url, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE mine (id int)")
    other = postgres.create_database("other")
    try:
        with (
            psycopg.connect(other, connect_timeout=10) as conn,
            pytest.raises(psycopg.errors.UndefinedTable),
        ):
            conn.execute("SELECT * FROM mine")
    finally:
        postgres.drop_database(other)
    assert other.rsplit("/", 1)[1] not in postgres.psql("SELECT datname FROM pg_database")
