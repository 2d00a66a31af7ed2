"""The request hot path does no work it need not repeat (issue 10, docs/adr/0003, 0023).

Counted, not timed: timing on a shared two-core machine says little, whereas whether a cached
lookup builds an SQL statement, or an answered request formats a line nobody reads, is a yes
or a no.
"""

from __future__ import annotations

from asyncio import run
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy.sql.selectable

from portway.compose import Portway
from portway.config import parse_settings
from portway.db.store import MetadataStore, NewManifest, open_metadata
from portway.http.app import build_app


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetadataStore]:
    s = open_metadata(f"sqlite:///{tmp_path / 'portway.db'}")
    yield s
    s.close()


def _allow(_tag: str, _current: str | None) -> None:
    return None


def test_cached_metadata_lookups_build_no_sql_statement(
    store: MetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = store.ensure_repository("r", "hosted")
    body = b'{"schemaVersion":2}'
    digest = "sha256:" + "1" * 64
    blob = "sha256:" + "2" * 64
    new = NewManifest(digest, "application/json", body, None, None, None, ())
    run(store.put_manifest(repo, "app", new, ["v1"], _allow))
    run(store.link_blob(repo, "app", blob, 1024))

    def lookups() -> tuple[object, ...]:
        return (
            run(store.manifest_by_tag(repo, "app", "v1")),
            run(store.manifest_by_digest(repo, "app", digest)),
            run(store.tag_info(repo, "app", "v1")),
            run(store.image_exists(repo, "app")),
            run(store.blob_size(repo, "app", blob)),
        )

    first = lookups()  # fills the cache
    assert first[0] is not None and first[4] == 1024
    built: list[object] = []
    real_init = sqlalchemy.sql.selectable.Select.__init__

    def counting_init(self: object, *args: object, **kw: object) -> None:
        built.append(args)
        real_init(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlalchemy.sql.selectable.Select, "__init__", counting_init)
    assert lookups() == first
    assert built == [], f"{len(built)} SQL statement(s) built for answers already cached"


@pytest.mark.parametrize("observe", [True, False])
def test_a_request_passes_one_middleware_and_one_response_hook(
    tmp_path: Path, observe: bool
) -> None:
    """Each aiohttp middleware and response hook is a coroutine (and a partial) per request:
    the observe middleware renders errors itself, `/readyz` reports a drain itself, and the
    API version, request id and drain headers are set in one hook."""
    settings = parse_settings(
        {
            "server": {
                "data_dir": str(tmp_path / "data"),
                "metrics": observe,
                "access_log": observe,
            },
            "repository": [{"name": "r", "type": "hosted"}],
        },
        environ={},
    )
    with Portway(settings) as root:
        app = build_app(root.context())
        assert len(app.middlewares) == 1
        assert len(app.on_response_prepare) == 1
