"""50 pushes of images sharing layers, several at once, into a real `portway serve` while
images are deleted and a garbage-collection pass runs every second, on SQLite and on
PostgreSQL: no push fails, every image that was not deleted is complete afterwards, and the
passes did delete garbage meanwhile (so they really ran against the pushes). The same run
on the 3-node cluster is in tests/test_cluster_state.py; the scenario in tests/gc_pushes.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gc_pushes import HOLD, pushes_while_gc_runs
from push_support import Registry
from support.server import PortwayServer


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PortwayServer]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    if url is not None:
        from sqlalchemy import create_engine, text

        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.begin() as conn:  # the module's database may hold a previous test's rows
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
    srv = PortwayServer(tmp_path, server={"gc_hold": HOLD}, database_url=url).start()
    yield srv
    srv.stop()


def test_pushes_while_gc_runs_lose_nothing(server: PortwayServer) -> None:
    pushes_while_gc_runs(Registry(f"{server.url}/repository/docker-hosted"), server.config_path)
