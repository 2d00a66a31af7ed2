"""Publish each proxy repository's upstream health (the auto-block breaker) to a small JSON
file in the data directory, so `portway repo show` — another process — can report it.

In a cluster (`SharedProxyHealth`, metadata on PostgreSQL) the same loop also shares the
breaker and the negative cache through the database (ADR 0021): a node whose breaker opened
writes it to `proxy_breakers` and every other node adopts it at its next look, so none of them
keeps asking an upstream that fails; "not found upstream" answers go to `proxy_negative` and
are merged into every node's negative cache. A look every `INTERVAL` seconds: two small
queries per node, none on a request's path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, select
from sqlalchemy.exc import SQLAlchemyError

from portway.db.dialect import dialect_for
from portway.db.shared_schema import proxy_breakers, proxy_negative
from portway.repos.base import Repository
from portway.repos.proxy import ProxyRepository

log = logging.getLogger("portway.proxy")

INTERVAL = 2.0


def state_path(data_dir: Path, repository: str) -> Path:
    return data_dir / "state" / f"proxy-{repository}.json"


def snapshot(repo: Repository) -> dict[str, Any] | None:
    """A proxy repository's upstream health as JSON-ready values; None for other kinds."""
    if not isinstance(repo, ProxyRepository):
        return None
    state = asdict(repo.breaker_state())
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in state.items()}


def write_state(data_dir: Path, repository: str, state: dict[str, Any]) -> None:
    path = state_path(data_dir, repository)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**state, "pid": os.getpid()}))
    os.replace(tmp, path)


def read_state(data_dir: Path, repository: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(state_path(data_dir, repository).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data


async def publish_loop(
    repos: Callable[[], Mapping[str, Repository]],
    data_dir: Path,
    shared: SharedProxyHealth | None = None,
) -> None:
    """`repos`: the repositories in service now (they change when the registry is rebuilt);
    `shared`: the cluster's copy of the breakers and negative caches, if any."""
    last: dict[str, dict[str, Any]] = {}
    while True:
        proxies = {n: r for n, r in repos().items() if isinstance(r, ProxyRepository)}
        if shared is not None:
            try:
                await asyncio.to_thread(shared.sync, proxies)
            except SQLAlchemyError as exc:
                log.warning("proxy health not shared with the cluster this time: %s", exc)
        for name, repo in proxies.items():
            state = snapshot(repo)
            if state is not None and state != last.get(name):
                await asyncio.to_thread(write_state, data_dir, name, state)
                last[name] = state
        await asyncio.sleep(INTERVAL)


class SharedProxyHealth:
    """Breakers and negative caches of proxy repositories, shared through the database."""

    def __init__(self, engine: Engine, node: str) -> None:
        self.engine = engine
        self.node = node[:128]
        self._published: dict[str, tuple[object, ...]] = {}

    def sync(self, proxies: Mapping[str, ProxyRepository]) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            for name, repo in proxies.items():
                self._publish_breaker(conn, name, repo, now)
                self._publish_negative(conn, name, repo)
            conn.execute(delete(proxy_negative).where(proxy_negative.c.expires < now))
            breakers = {r.repository: r for r in conn.execute(select(proxy_breakers))}
            negatives = list(
                conn.execute(
                    select(proxy_negative).where(
                        proxy_negative.c.repository.in_(list(proxies)),
                        proxy_negative.c.expires > now,
                    )
                )
            )
        for name, repo in proxies.items():
            row = breakers.get(name)
            if row is not None and row.node != self.node:
                repo.breaker.adopt(
                    row.blocked_until, row.consecutive_failures, row.last_error, row.last_error_at
                )
            mine = [(r.image, r.reference, r.expires) for r in negatives if r.repository == name]
            repo.negative.merge(mine)

    def _publish_breaker(
        self, conn: Connection, name: str, repo: ProxyRepository, now: float
    ) -> None:
        blocked_until, failures, last_error, last_error_at = repo.breaker.numbers()
        state = (blocked_until, failures, last_error)
        if state == self._published.get(name):
            return
        self._published[name] = state
        values = {
            "consecutive_failures": failures,
            "blocked_until": blocked_until,
            "last_error": last_error,
            "last_error_at": last_error_at,
            "node": self.node,
            "updated": now,
        }
        stmt = dialect_for(conn).insert(proxy_breakers).values(repository=name, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["repository"], set_=values))

    @staticmethod
    def _publish_negative(conn: Connection, name: str, repo: ProxyRepository) -> None:
        added, forgotten = repo.negative.take_changes()
        if added:
            stmt = dialect_for(conn).insert(proxy_negative)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["repository", "image", "reference"],
                    set_={"expires": stmt.excluded.expires},
                ),
                [
                    {"repository": name, "image": i, "reference": r, "expires": e}
                    for (i, r), e in added.items()
                ],
            )
        for image, reference in forgotten:
            conn.execute(
                delete(proxy_negative).where(
                    proxy_negative.c.repository == name,
                    proxy_negative.c.image == image,
                    proxy_negative.c.reference == reference,
                )
            )
