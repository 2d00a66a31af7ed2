"""The audit log in the database: records of two nodes exported together in time order,
secrets scrubbed; a database that cannot be written keeps the records queued (the log is not
healthy meanwhile) and they are written once it can be again."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine

from portway.auth.audit_db import DatabaseAuditLog, export
from portway.db.shared_schema import audit_events
from portway.db.store import MetadataStore, open_metadata
from support.ports import free_port


@pytest.fixture
def store(postgres_url: str) -> Iterator[MetadataStore]:
    meta = open_metadata(postgres_url)
    with meta.engine.begin() as conn:
        conn.execute(audit_events.delete())
    yield meta
    meta.close()


def test_two_nodes_records_are_exported_together(store: MetadataStore) -> None:
    a = DatabaseAuditLog(store.engine, "node-a", flush_interval=0.05)
    b = DatabaseAuditLog(store.engine, "node-b", flush_interval=0.05)
    a.write("login", principal="alice", client="10.0.0.1", detail={"password": "hunter2"})
    b.write("login", principal="bob", outcome="failure", detail={"note": "Bearer abc.def"})
    a.write("user.disable", principal="admin", detail={"user": "bob"})
    a.close()
    b.close()
    records = [json.loads(line) for line in export(store.engine)]
    assert [(r["event"], r["node"]) for r in records] == [
        ("login", "node-a"),
        ("login", "node-b"),
        ("user.disable", "node-a"),
    ]
    assert records[0]["detail"] == {"password": "[redacted]"}
    assert "abc.def" not in json.dumps(records[1])
    assert [json.loads(x)["event"] for x in export(store.engine, since=1e12)] == []


def test_records_wait_while_the_database_cannot_be_written(store: MetadataStore) -> None:
    gone = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    log = DatabaseAuditLog(gone, "node-a", flush_interval=0.05)
    try:
        for i in range(3):
            log.write("login", principal=f"user{i}")  # never raises, never waits
        log.flush()
        assert not log.healthy and list(export(store.engine)) == []
        log.engine = store.engine  # the database is back
        log.flush()
        assert log.healthy
        assert [json.loads(x)["principal"] for x in export(store.engine)] == [
            "user0",
            "user1",
            "user2",
        ]
    finally:
        log.close()
