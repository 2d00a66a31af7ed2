"""Alembic migrations: an SQLite database made by Portway before Alembic (tests/data, made at
commit a4136c8 with its hand-made steps 1-3) upgrades in place; new SQLite and PostgreSQL
databases get exactly the schema the code declares; `portway db upgrade`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from asyncio import run
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import select, text

from portway.auth.passwords import FAST_TEST_PARAMS, PasswordHasher
from portway.auth.store import UserStore
from portway.db.engine import engines_for
from portway.db.migrations import (
    HEAD,
    REVISIONS,
    _upgrade,
    current_revision,
    load_table_modules,
    migrate,
)
from portway.db.schema import metadata, schema_version
from portway.db.store import open_metadata
from support.postgres import Postgres

OLD_DB = Path(__file__).parent / "data" / "portway-a4136c8.db"
REPO = Path(__file__).resolve().parents[1]


def test_head_constant_is_the_newest_revision() -> None:
    assert ScriptDirectory(str(REVISIONS)).get_current_head() == HEAD


def test_database_made_before_alembic_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "portway.db"
    shutil.copy(OLD_DB, path)
    store = open_metadata(path)
    try:
        with store.read_engine.connect() as conn:
            assert current_revision(conn) == HEAD
            versions = [r[0] for r in conn.execute(select(schema_version.c.version))]
        assert sorted(versions) == [1, 2, 3]
        repo = store.ensure_repository("docker-hosted", "hosted")
        tagged = run(store.manifest_by_tag(repo, "app", "latest"))
        assert tagged is not None and tagged.digest == "sha256:" + "1" * 64
        assert run(store.list_tags(repo, "app", None, None)) == ["latest", "v1"]
        assert run(store.blob_size(repo, "app", "sha256:" + "a" * 64)) == 1234
        assert run(store.references(repo, "app", "sha256:" + "a" * 64))
        assert run(store.get_upload("0f0f0f0f-0000-4000-8000-000000000000")) is not None
        assert run(store.image_descriptions(repo)) == {"app": "old"}
        users = UserStore(store.engine, PasswordHasher(FAST_TEST_PARAMS))
        assert users.authenticate("alice", "correct horse") is not None
        with store.read_engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM login_failures")).scalar() == 1
    finally:
        store.close()
    assert migrate(engines_for(f"sqlite:///{path}")[1]) == HEAD  # again: nothing to do


def _schema_differences(url: str) -> list[object]:
    load_table_modules()
    _read, write = engines_for(url)
    try:
        with write.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), metadata))
    finally:
        write.dispose()


def _revisions_from_nothing(url: str) -> None:
    _read, write = engines_for(url)
    try:
        with write.begin() as conn:
            _upgrade(conn)
            assert current_revision(conn) == HEAD
    finally:
        write.dispose()


def test_new_sqlite_database_has_the_declared_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    open_metadata(url).close()  # create_all, stamped at HEAD
    assert _schema_differences(url) == []
    by_revisions = f"sqlite:///{tmp_path / 'revisions.db'}"
    _revisions_from_nothing(by_revisions)  # the revisions give the same tables
    assert _schema_differences(by_revisions) == []


def test_new_postgresql_database_has_the_declared_schema(
    postgres: Postgres, postgres_url: str
) -> None:
    by_revisions = postgres.create_database("revisions")
    try:
        _revisions_from_nothing(by_revisions)
        assert _schema_differences(by_revisions) == []
    finally:
        postgres.drop_database(by_revisions)
    # Three nodes starting at once migrate it once, without an error.
    errors: list[BaseException] = []

    def start() -> None:
        try:
            open_metadata(postgres_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert _schema_differences(postgres_url) == []
    _read, write = engines_for(postgres_url)
    with write.connect() as conn:
        assert current_revision(conn) == HEAD
    write.dispose()


def test_new_and_current_databases_open_without_importing_alembic(tmp_path: Path) -> None:
    path = tmp_path / "portway.db"
    code = (
        "import sys; from pathlib import Path; from portway.db.store import open_metadata; "
        f"open_metadata(Path({str(path)!r})).close(); print('alembic' in sys.modules)"
    )
    for _ in ("new", "at head"):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert run.stdout.strip() == "False", run.stderr


def test_portway_db_upgrade(tmp_path: Path, postgres_url: str) -> None:
    path = tmp_path / "data" / "portway.db"
    path.parent.mkdir()
    shutil.copy(OLD_DB, path)
    config = tmp_path / "portway.toml"
    config.write_text(f'[server]\ndata_dir = "{path.parent}"\n')
    cli = [sys.executable, "-m", "portway.cli.main", "db", "upgrade"]
    first = subprocess.run([*cli, "--config", str(config)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "upgraded from before Alembic" in first.stdout and HEAD in first.stdout
    again = subprocess.run([*cli, "--config", str(config)], capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    pg = subprocess.run([*cli, "--url", postgres_url], capture_output=True, text=True)
    assert pg.returncode == 0, pg.stderr
    assert "newest schema" in pg.stdout or "upgraded" in pg.stdout
