"""Each node's view of the connectors it serves, shared through the metadata database
(`connector_states`, ADR 0032), so the admin API on any node can say which nodes listen on a
connector and which could not bind it (and why).

Every worker of a node writes its view under the node's name when it changes and again every
`HEARTBEAT` seconds (the workers of one node share their listening sockets, so they agree but
for the moment a change takes to reach each). A view not written again for `STALE` seconds
belongs to a node that stopped, or cannot reach the database: it is not shown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import SQLAlchemyError

from portway.db.dialect import dialect_for
from portway.db.shared_schema import connector_states
from portway.observe.store_latency import timed_database

log = logging.getLogger("portway.server")

SHARE_POLL = 0.5  # seconds between two looks at this worker's listeners
HEARTBEAT = 10.0
STALE = 30.0

ListenerState = tuple[str, str | None]  # ("listening" | "failed", detail)


@dataclass(frozen=True, slots=True)
class NodeView:
    node: str
    state: str
    detail: str | None
    updated: float


class ConnectorStates:
    def __init__(self, engine: Engine, read_engine: Engine, node: str) -> None:
        self.engine = engine
        self.read_engine = read_engine
        self.node = node[:128]
        self._dialect = dialect_for(engine)

    def publish(self, states: Mapping[str, ListenerState]) -> None:
        """This node's view now: `states` by listen address; any other row of it goes."""
        now = time.time()
        table = connector_states
        with timed_database("connector_state_publish", "write"), self.engine.begin() as conn:
            gone = delete(table).where(table.c.node == self.node)
            if states:
                gone = gone.where(table.c.listen.not_in(list(states)))
            conn.execute(gone)
            for listen, (state, detail) in sorted(states.items()):
                stmt = self._dialect.insert(table).values(
                    node=self.node, listen=listen, state=state, detail=detail, updated=now
                )
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["node", "listen"],
                        set_={"state": state, "detail": detail, "updated": now},
                    )
                )

    def views(self, max_age: float = STALE) -> dict[str, list[NodeView]]:
        """Every node's view written within `max_age` seconds, by listen address."""
        table = connector_states
        since = time.time() - max_age
        with timed_database("connector_state_views", "read"), self.read_engine.connect() as conn:
            rows = conn.execute(
                select(table).where(table.c.updated >= since).order_by(table.c.node)
            ).all()
        out: dict[str, list[NodeView]] = {}
        for row in rows:
            out.setdefault(row.listen, []).append(
                NodeView(row.node, row.state, row.detail, row.updated)
            )
        return out


async def share_loop(states: Mapping[str, ListenerState], shared: ConnectorStates) -> None:
    """A worker's part: write `states` (this worker's listeners, as they change) whenever
    they changed since the last write, and every `HEARTBEAT` seconds in any case. A database
    that cannot be reached is logged once per outage; serving goes on."""
    last: dict[str, ListenerState] | None = None
    written = 0.0
    failing = False
    while True:
        now = dict(states)
        if now != last or time.monotonic() - written >= HEARTBEAT:
            try:
                await asyncio.to_thread(shared.publish, now)
            except SQLAlchemyError as exc:
                if not failing:
                    log.warning("connector states not shared with the cluster: %s", exc)
                failing = True
            else:
                last, written, failing = now, time.monotonic(), False
        await asyncio.sleep(SHARE_POLL)
