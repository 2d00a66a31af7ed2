"""Tag patterns on PostgreSQL (revision 0013, docs/adr/0030): ix_tags_name holds the name in
`text_pattern_ops`, made by the revisions and by a new database alike; a pattern's literal
start is a range of it, first page and cursor pages, in a generic plan too; and the matches,
their order and their pages are SQLite's, in a database whose collation is not C (ICU `en`)
as in the test cluster's C.UTF-8."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from psycopg.sql import Literal
from sqlalchemy import Engine, event

from portway.api.nexus_components import _like
from portway.db.browse import BrowseQueries
from portway.db.engine import engines_for
from portway.db.migrations import HEAD, REVISIONS, _upgrade, current_revision, migrate
from portway.db.schema import tags
from portway.db.store import MetadataStore, open_metadata
from portway.repos.bulk import BulkTags
from support.postgres import Postgres
from support.tag_rows import store_with_tags

IMAGES = ("Team/x", "team-app", "team/app", "teamb")
NAMES = [
    *("pr-9", "pr-90", "pr-91", "pr-9_x", "pr-9%x", "pr-9x", "pR-9", "PR-9", "pr9", "pr-1"),
    *("pr_1", "pr%1", "pr-[1]", "pr-[1]x", "pr-?", "pr-?1", "a\\b", "a\\bc", "ab"),
    *("v1.0-rc", "v2-rc", "latest", "é-1", "éa", "e-1"),
]
PAGE = 3


def _ix_tags_name(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(
            conn.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'tags' "
                "AND indexname = 'ix_tags_name'"
            ).scalar()
        )


def _downgrade(engine: Engine, to: str) -> None:
    script = ScriptDirectory(str(REVISIONS))
    with engine.begin() as conn:

        def steps(rev: Any, _context: object) -> Any:
            return script._downgrade_revs(to, rev)

        with EnvironmentContext(Config(), script, fn=steps, destination_rev=to) as env:
            env.configure(connection=conn)
            with env.begin_transaction():
                env.run_migrations()


PATTERN_OPS = "USING btree (repo_id, name text_pattern_ops, image)"


def test_revision_0013_makes_the_pattern_index_on_postgresql(postgres: Postgres) -> None:
    made = postgres.create_database("made")
    by_revisions = postgres.create_database("revisions")
    engines = [engines_for(made)[1], engines_for(by_revisions)[1]]
    try:
        open_metadata(made).close()  # a new database: the declared tables, stamped at HEAD
        assert PATTERN_OPS in _ix_tags_name(engines[0])
        write = engines[1]
        with write.begin() as conn:
            _upgrade(conn)  # every revision, from nothing
        assert PATTERN_OPS in _ix_tags_name(write)
        _downgrade(write, "0012")
        assert _ix_tags_name(write).endswith("USING btree (repo_id, name, image)")
        assert migrate(write) == HEAD  # a database at 0012 upgrades in place
        assert PATTERN_OPS in _ix_tags_name(write)
        with write.connect() as conn:
            assert current_revision(conn) == HEAD
    finally:
        for engine in engines:
            engine.dispose()
        postgres.drop_database(made)
        postgres.drop_database(by_revisions)


@pytest.fixture(scope="module")
def icu_url(postgres: Postgres) -> Iterator[str]:
    """A database whose default collation is ICU's English (not C): `pR-9` sorts before
    `pr-9`, case and punctuation weigh less than letters."""
    postgres.psql(
        "CREATE DATABASE tag_pattern_icu TEMPLATE template0 LOCALE_PROVIDER icu "
        "ICU_LOCALE 'en' LOCALE 'C.UTF-8'"
    )
    url = postgres.url("tag_pattern_icu")
    yield url
    postgres.drop_database(url)


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "postgresql-icu"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MetadataStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('patterns') / 'portway.db'}"
    elif request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = request.getfixturevalue("icu_url")
    meta = store_with_tags(url, IMAGES, NAMES)
    yield meta
    meta.close()


def _pages(q: BrowseQueries, **patterns: str) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    after = None
    while True:
        page = [(r.image, r.name) for r in q.components(1, after, PAGE, **patterns)]
        out.append(page)
        if len(page) < PAGE:
            return out
        after = page[-1]


def _spec(pattern: str | None, value: str) -> bool:
    """Nexus's search: `*` any run of characters, everything else literal, case-sensitive."""
    return pattern is None or fnmatch.fnmatchcase(value, re.sub(r"([?\[])", r"[\1]", pattern))


@pytest.mark.parametrize(
    ("name", "version"),
    [(None, "pr-9*"), (None, "pr_*"), (None, "pr%*"), (None, "pr-[1]*"), (None, "pr-?*"),
     (None, "a\\b*"), (None, "PR-*"), (None, "é*"), (None, "pr-9"), ("team/*", "pr-9*"),
     ("*", "pr-9*"), (None, "*-rc"), (None, "*9_*")],
)  # fmt: skip
def test_tag_patterns_page_as_sqlite_does(
    store: MetadataStore, name: str | None, version: str | None
) -> None:
    """Pages of PAGE rows in (image, tag) code point order, cursor to cursor: what SQLite
    answers. A pattern with no literal start is read in the database's collation on
    PostgreSQL (the primary key's order): there the pages hold the same rows."""
    q = BrowseQueries(store.read_engine)
    patterns = {"tag_like": _like(version)} if version else {}
    if name:
        patterns["name_like"] = _like(name)
    rows = sorted((i, t) for i in IMAGES for t in NAMES if _spec(name, i) and _spec(version, t))
    assert rows, "a pattern that matches nothing proves little"
    expected = [rows[n : n + PAGE] for n in range(0, len(rows) + 1, PAGE)]
    pages = _pages(q, **patterns)
    literal_start = version is not None and version[0] != "*"
    if literal_start or store.engine.url.database != "tag_pattern_icu":
        assert pages == expected
    else:
        got = [row for page in pages for row in page]
        assert sorted(got) == rows and len(got) == len(rows)


@pytest.mark.parametrize(
    "match", ["pr-9*", "pr-?", "pr-[19]*", "pr_*", "pr%*", "[p]r-9*", "PR-*", "a\\b*", "*"]
)
def test_bulk_preview_globs_choose_alike(store: MetadataStore, match: str) -> None:
    """`?` and `[...]` are wildcards here (a glob over names), `_`, `%` and `\\` literal."""
    chosen = BulkTags(BrowseQueries(store.read_engine)).preview(1, "team/app", (), match)
    assert [r.name for r in chosen] == sorted(n for n in NAMES if fnmatch.fnmatchcase(n, match))


def _tag(i: int) -> str:  # bench/api_tags.py's mix: pr- tags sort after most others
    return (f"v{i // 1000}.{i % 100}.{i % 10}-{i}", f"{i // 1000}.{i % 1000}", f"pr-{i}",
            f"build-{i:06d}")[i % 4]  # fmt: skip


def _plan(engine: Engine, stmt: str, params: dict[str, Any], generic: bool = False) -> str:
    """EXPLAIN of one statement as sent, or of its generic plan (the one a statement that
    psycopg prepared after five runs may get): what PostgreSQL would do."""
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cur = raw.cursor()
        if not generic:
            cur.execute("EXPLAIN " + stmt, params)
            return "\n".join(r[0] for r in cur.fetchall())
        names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", stmt)))
        numbered = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m.group(1)) + 1}", stmt)
        cur.execute("SET plan_cache_mode = force_generic_plan")
        cur.execute(f"PREPARE pattern_page AS {numbered}")
        values = ", ".join(Literal(params[n]).as_string(raw) for n in names)
        cur.execute(f"EXPLAIN EXECUTE pattern_page({values})")
        plan = "\n".join(r[0] for r in cur.fetchall())
        cur.execute("DEALLOCATE pattern_page")
        raw.rollback()
        return plan


def test_a_tag_prefix_reads_the_pattern_index_on_postgresql(icu_url: str) -> None:
    """100,000 tags in three images, ANALYZEd (as autovacuum leaves a serving registry): the
    first page, a cursor page and the bulk preview's read are ranges of ix_tags_name, not a
    walk of the primary key, with the values bound or as a generic plan."""
    meta = open_metadata(icu_url)
    try:
        repo_id = meta.ensure_repository("big", "hosted")
        images = ("team/app", "team/db", "web")
        rows = [
            {"repo_id": repo_id, "image": images[i % 3], "name": _tag(i),
             "digest": f"sha256:{i:064x}", "updated": float(i)}
            for i in range(100_000)
        ]  # fmt: skip
        with meta.engine.begin() as conn:
            for start in range(0, len(rows), 10_000):
                conn.execute(tags.insert(), rows[start : start + 10_000])
        with meta.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE tags")
        sent: list[tuple[str, dict[str, Any]]] = []

        def keep(_c: object, _cur: object, stmt: str, params: Any, *_rest: object) -> None:
            if "FROM tags" in stmt and "~>=~" in stmt:
                sent.append((stmt, dict(params)))

        q = BrowseQueries(meta.read_engine)
        event.listen(meta.read_engine, "before_cursor_execute", keep)
        first = q.components(repo_id, None, 51, tag_like=_like("pr-9*"))
        second = q.components(repo_id, (first[-1].image, first[-1].name), 51, tag_like="pr-9%")
        q.tags_starting(repo_id, "team/app", "pr-9")
        event.remove(meta.read_engine, "before_cursor_execute", keep)
        every = sorted((r["image"], r["name"]) for r in rows if r["name"].startswith("pr-9"))
        assert [(r.image, r.name) for r in first + second] == every[:102]
        assert len(sent) == 3
        for stmt, params in sent:
            for generic in (False, True):
                plan = _plan(meta.read_engine, stmt, params, generic)
                assert re.search(r"Index (Only )?Scan (using|on) ix_tags_name", plan), plan
                assert "Index Cond: ((repo_id = " in plan and "~>=~" in plan, plan
                assert "tags_pkey" not in plan, plan
    finally:
        meta.close()


def test_sqlite_keeps_the_plain_name_index(tmp_path: Path) -> None:
    """Revision 0013 is PostgreSQL's alone: SQLite's ix_tags_name stays (repo_id, name,
    image) in its binary order, made by the revisions or by a new database."""
    url = f"sqlite:///{tmp_path / 'revisions.db'}"
    _read, write = engines_for(url)
    try:
        with write.begin() as conn:
            _upgrade(conn)
            sql = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_tags_name'"
            ).scalar()
        assert sql == "CREATE INDEX ix_tags_name ON tags (repo_id, name, image)"
    finally:
        write.dispose()
