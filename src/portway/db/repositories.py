"""Repository definitions made through the admin API, stored in the metadata database.

Each row is one repository's definition (the same fields as a `[[repository]]` table, as
JSON) with a revision that moves on every change (the API's ETag). One more row,
`repository_generation`, counts changes of the whole set: every worker and node reads it (one
indexed row, at most every `FRESHNESS` seconds while it serves requests) and rebuilds its
repository registry when it moved (repos/admin.py, ADR 24).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    String,
    Table,
    Text,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from portway.db.notify import ChangeSignal, notify_change
from portway.db.schema import metadata

repository_definitions = Table(
    "repository_definitions",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("definition", Text, nullable=False),  # JSON: RepositoryConfig's fields
    Column("revision", Integer, nullable=False),
    Column("updated", Float, nullable=False),
)

repository_generation = Table(
    "repository_generation",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("generation", Integer, nullable=False),
)


class DefinitionConflict(Exception):
    """The stored definition is not the one the caller expected (exists, gone, or edited)."""


@dataclass(frozen=True, slots=True)
class StoredDefinition:
    name: str
    definition: dict[str, Any]
    revision: int
    updated: float


class DefinitionStore:
    def __init__(
        self,
        engine: Engine,
        read_engine: Engine | None = None,
        signal: ChangeSignal | None = None,
    ) -> None:
        """`signal`: the metadata store's change signal in a cluster; `generation()` then
        asks the database only after a change (a round trip 20 times a second on the event
        loop otherwise, ADR 21)."""
        self.engine = engine
        self.read_engine = read_engine or engine
        self._signal = signal
        self._seen: tuple[object, int] | None = None

    @property
    def inline(self) -> bool:
        """SQLite: a read is microseconds on a local file, made on the caller's thread."""
        return self.read_engine.dialect.name == "sqlite"

    def known_generation(self) -> int | None:
        """The generation when the change signal says it cannot have moved since it was read
        (no database call), else None: ask `generation()` (off the event loop on PostgreSQL)."""
        token = self._signal.token() if self._signal is not None else None
        if token is not None and self._seen is not None and self._seen[0] == token:
            return self._seen[1]
        return None

    def generation(self) -> int:
        token = self._signal.token() if self._signal is not None else None
        if token is not None and self._seen is not None and self._seen[0] == token:
            return self._seen[1]
        with self.read_engine.connect() as conn:
            value = conn.execute(
                select(repository_generation.c.generation).where(repository_generation.c.id == 1)
            ).scalar()
        if token is not None:
            self._seen = (token, int(value or 0))
        return int(value or 0)

    def list(self) -> list[StoredDefinition]:
        with self.read_engine.connect() as conn:
            rows = conn.execute(
                select(repository_definitions).order_by(repository_definitions.c.name)
            ).all()
        return [
            StoredDefinition(r.name, json.loads(r.definition), r.revision, r.updated) for r in rows
        ]

    def _bump(self, conn: Any) -> None:
        bump_generation(conn)

    def create(self, name: str, definition: dict[str, Any]) -> StoredDefinition:
        now = time.time()
        with self.engine.begin() as conn:
            found = conn.execute(
                select(repository_definitions.c.name).where(repository_definitions.c.name == name)
            ).first()
            if found is not None:
                raise DefinitionConflict(f"repository {name!r} exists")
            try:
                conn.execute(
                    repository_definitions.insert().values(
                        name=name, definition=json.dumps(definition), revision=1, updated=now
                    )
                )
            except IntegrityError:  # another node's create won since the check above
                raise DefinitionConflict(f"repository {name!r} exists") from None
            self._bump(conn)
        return StoredDefinition(name, definition, 1, now)

    def replace(
        self, name: str, definition: dict[str, Any], expected: int | None
    ) -> StoredDefinition:
        """Store a new definition; `expected`: the revision the caller saw (None: any)."""
        now = time.time()
        with self.engine.begin() as conn:
            current = _revision(conn, name, expected)
            conn.execute(
                update(repository_definitions)
                .where(repository_definitions.c.name == name)
                .values(definition=json.dumps(definition), revision=current + 1, updated=now)
            )
            self._bump(conn)
        return StoredDefinition(name, definition, current + 1, now)

    def delete(self, name: str, expected: int | None) -> None:
        with self.engine.begin() as conn:
            _revision(conn, name, expected)
            conn.execute(
                repository_definitions.delete().where(repository_definitions.c.name == name)
            )
            self._bump(conn)


def bump_generation(conn: Connection) -> None:
    """One more change of the definitions (repositories, connectors, hosts), in the caller's
    transaction."""
    notify_change(conn)  # every node's next generation() asks the database again
    moved = conn.execute(
        update(repository_generation)
        .where(repository_generation.c.id == 1)
        .values(generation=repository_generation.c.generation + 1)
    )
    if moved.rowcount == 0:
        conn.execute(repository_generation.insert().values(id=1, generation=1))


def _revision(conn: Connection, name: str, expected: int | None) -> int:
    """The stored definition's revision, checked against the one the caller saw (None: any)."""
    current = conn.execute(
        select(repository_definitions.c.revision).where(repository_definitions.c.name == name)
    ).scalar()
    if current is None:
        raise DefinitionConflict(f"no repository {name!r}")
    if expected is not None and current != expected:
        raise DefinitionConflict(f"repository {name!r} changed (revision {current})")
    return int(current)
