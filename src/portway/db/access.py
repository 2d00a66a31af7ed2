"""Connectors and host mappings made through the admin API, stored in the metadata database.

One table for both kinds: `access_definitions` (kind `connector` keyed by its `listen`
address, kind `host` keyed by the host name), each row the definition as JSON (the fields of a
`[[connector]]` or `[[host]]` table) with a revision that moves on every change (the API's
ETag). A change bumps the same `repository_generation` row as a repository change, so every
worker and node that already watches it for repositories sees connectors and hosts move too
(db/repositories.py, ADR 24, ADR 28).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Column, Engine, Float, Integer, String, Table, Text, select, update
from sqlalchemy.exc import IntegrityError

from portway.db.repositories import DefinitionConflict, bump_generation
from portway.db.schema import metadata

Kind = Literal["connector", "host"]

access_definitions = Table(
    "access_definitions",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("key", String(300), primary_key=True),
    Column("definition", Text, nullable=False),  # JSON: ConnectorConfig's or HostConfig's
    Column("revision", Integer, nullable=False),
    Column("updated", Float, nullable=False),
)


@dataclass(frozen=True, slots=True)
class StoredAccess:
    kind: Kind
    key: str
    definition: dict[str, Any]
    revision: int


def _where(kind: Kind, key: str) -> Any:
    return (access_definitions.c.kind == kind) & (access_definitions.c.key == key)


class AccessStore:
    def __init__(self, engine: Engine, read_engine: Engine | None = None) -> None:
        self.engine = engine
        self.read_engine = read_engine or engine

    def list(self, kind: Kind | None = None) -> list[StoredAccess]:
        query = select(access_definitions).order_by(
            access_definitions.c.kind, access_definitions.c.key
        )
        if kind is not None:
            query = query.where(access_definitions.c.kind == kind)
        with self.read_engine.connect() as conn:
            rows = conn.execute(query).all()
        return [StoredAccess(r.kind, r.key, json.loads(r.definition), r.revision) for r in rows]

    def create(self, kind: Kind, key: str, definition: dict[str, Any]) -> StoredAccess:
        with self.engine.begin() as conn:
            found = conn.execute(select(access_definitions.c.key).where(_where(kind, key))).first()
            if found is not None:
                raise DefinitionConflict(f"{kind} {key!r} exists")
            try:
                conn.execute(
                    access_definitions.insert().values(
                        kind=kind,
                        key=key,
                        definition=json.dumps(definition),
                        revision=1,
                        updated=time.time(),
                    )
                )
            except IntegrityError:  # another node's create won since the check above
                raise DefinitionConflict(f"{kind} {key!r} exists") from None
            bump_generation(conn)
        return StoredAccess(kind, key, definition, 1)

    def _revision(self, conn: Any, kind: Kind, key: str, expected: int | None) -> int:
        current = conn.execute(
            select(access_definitions.c.revision).where(_where(kind, key))
        ).scalar()
        if current is None:
            raise DefinitionConflict(f"no {kind} {key!r}")
        if expected is not None and current != expected:
            raise DefinitionConflict(f"{kind} {key!r} changed (revision {current})")
        return int(current)

    def replace(
        self, kind: Kind, key: str, definition: dict[str, Any], expected: int | None
    ) -> StoredAccess:
        """Store a new definition; `expected`: the revision the caller saw (None: any)."""
        with self.engine.begin() as conn:
            current = self._revision(conn, kind, key, expected)
            conn.execute(
                update(access_definitions)
                .where(_where(kind, key))
                .values(
                    definition=json.dumps(definition), revision=current + 1, updated=time.time()
                )
            )
            bump_generation(conn)
        return StoredAccess(kind, key, definition, current + 1)

    def delete(self, kind: Kind, key: str, expected: int | None) -> None:
        with self.engine.begin() as conn:
            self._revision(conn, kind, key, expected)
            conn.execute(access_definitions.delete().where(_where(kind, key)))
            bump_generation(conn)
