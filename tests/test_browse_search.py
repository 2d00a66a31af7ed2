"""Tag patterns across a repository's images (what Nexus's search and components read,
db/browse.py `components`) on SQLite and PostgreSQL: the same matches as the pattern means,
case-sensitive on both, in (image, tag) order across cursor pages; on SQLite a pattern with a
literal start reads a range of ix_tags_name (revision 0010), not every tag."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event

from portway.api.nexus_components import _like
from portway.db.browse import BrowseQueries, TagRow, like_parts
from portway.db.store import MetadataStore, open_metadata
from support.tag_rows import store_with_tags

IMAGES = ("team/app", "team/db", "web")
NAMES = [f"pr-{i}" for i in range(60)] + ["PR-7", "pr_x", "v1.0", "v1.0-rc", "latest", "p*r"]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    url = (
        f"sqlite:///{tmp_path / 'portway.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    meta = store_with_tags(url, IMAGES, NAMES)
    yield meta
    meta.close()


def every_page(q: BrowseQueries, limit: int, **patterns: str) -> list[tuple[str, str]]:
    out: list[TagRow] = []
    while True:
        after = (out[-1].image, out[-1].name) if out else None
        page = q.components(1, after, limit, **patterns)
        out += page
        if len(page) < limit:
            return [(r.image, r.name) for r in out]


@pytest.mark.parametrize(
    ("name", "version"),
    [(None, "pr-1*"), (None, "pr-*"), (None, "PR-*"), ("team/*", "v1.0*"), (None, "pr_*"),
     ("team/a*", None), (None, "*-rc"), (None, "p*r"), (None, "latest")],
)  # fmt: skip
def test_patterns_match_as_globs_across_pages(
    store: MetadataStore, name: str | None, version: str | None
) -> None:
    q = BrowseQueries(store.read_engine)
    patterns = {}
    if name:
        patterns["name_like"] = _like(name)
    if version:
        patterns["tag_like"] = _like(version)
    expected = sorted(
        (image, tag)
        for image in IMAGES
        for tag in NAMES
        if (not name or fnmatch.fnmatchcase(image, name.replace("[", "[[]")))
        and (not version or fnmatch.fnmatchcase(tag, version.replace("[", "[[]")))
    )
    assert expected, "a pattern that matches nothing proves little"
    assert every_page(q, 7, **patterns) == expected


def test_a_tag_prefix_reads_the_name_index_on_sqlite(tmp_path: Path) -> None:
    """The statement `components` sends, first page and a cursor page, explained by SQLite."""
    meta = open_metadata(f"sqlite:///{tmp_path / 'portway.db'}")
    sent: list[tuple[str, object]] = []

    def keep(conn: object, cursor: object, stmt: str, params: object, *rest: object) -> None:
        if "GLOB" in stmt:
            sent.append((stmt, params))

    try:
        assert like_parts(_like("pr-9*")) == ("pr-9", "pr-9*")
        q = BrowseQueries(meta.read_engine)
        event.listen(meta.read_engine, "before_cursor_execute", keep)
        q.components(1, None, 51, tag_like=_like("pr-9*"))
        q.components(1, ("team/app", "pr-90"), 51, tag_like=_like("pr-9*"))
        event.remove(meta.read_engine, "before_cursor_execute", keep)
        assert len(sent) == 2
        with meta.read_engine.connect() as conn:
            for stmt, params in sent:
                raw = conn.connection.dbapi_connection
                assert raw is not None
                plan = " ".join(
                    str(r[-1]) for r in raw.execute("EXPLAIN QUERY PLAN " + stmt, params)
                )
                assert "ix_tags_name (repo_id=? AND name>? AND name<?)" in plan, plan
    finally:
        meta.close()


@pytest.mark.parametrize("match", ["pr-1*", "pr-?", "p*r", "[lv]*", "*", "PR-*", "nothing*"])
def test_bulk_preview_chooses_what_the_glob_means(store: MetadataStore, match: str) -> None:
    """The bulk delete preview reads only the names its pattern's literal start allows (a
    primary-key range on SQLite) and chooses the same tags as the pattern over every tag."""
    from portway.repos.bulk import BulkTags

    chosen = BulkTags(BrowseQueries(store.read_engine)).preview(1, "web", (), match)
    assert [r.name for r in chosen] == sorted(n for n in NAMES if fnmatch.fnmatchcase(n, match))
