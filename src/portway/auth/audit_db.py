"""The audit log in the metadata database, for a cluster (ADR 0022): every node's records in
one table (`audit_events`), read back as JSON lines by `portway audit export`.

A request never waits for the database: `write` (the same as the file log's, secrets scrubbed
the same way) puts the record's line in a bounded in-memory queue, and a thread of this log
inserts what is queued every `flush_interval` seconds in one transaction. While the database
cannot be written the lines stay queued (up to `max_pending`; older ones are counted as lost
beyond that), `healthy` is False and the failure is logged once a minute, as for a full disk
under the file log; the next insert that works empties the queue and says so. `close()`
writes what is left.
"""

from __future__ import annotations

import collections
import io
import json
import threading
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from portway.auth.audit import AuditLog
from portway.db.shared_schema import audit_events

FLUSH_INTERVAL = 0.2  # seconds between inserts
MAX_PENDING = 50000  # records kept while the database cannot be written
BATCH = 1000


class DatabaseAuditLog(AuditLog):
    def __init__(
        self,
        engine: Engine,
        node: str,
        *,
        flush_interval: float = FLUSH_INTERVAL,
        max_pending: int = MAX_PENDING,
    ) -> None:
        super().__init__(_Discard())
        self.engine = engine
        self.node = node[:128]
        self.flush_interval = flush_interval
        self._pending: collections.deque[tuple[float, str, str]] = collections.deque()
        self._max_pending = max_pending
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="portway-audit", daemon=True)
        self._thread.start()

    def _append(self, line: str) -> None:
        # Called by `write` under its lock: queue only, never a database call here.
        record = json.loads(line)
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()
            raise OSError("the audit queue is full while the database cannot be written")
        self._pending.append((self._clock(), str(record.get("event", ""))[:64], line.rstrip("\n")))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.flush_interval)
            self.flush()

    def flush(self) -> None:
        """Insert what is queued (from the log's thread, or `close`)."""
        while True:
            with self._lock:
                batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
            if not batch:
                return
            rows = [
                {"at": at, "node": self.node, "event": event, "record": record}
                for at, event, record in batch
            ]
            try:
                with self.engine.begin() as conn:
                    conn.execute(audit_events.insert(), rows)
            except SQLAlchemyError as exc:
                with self._lock:
                    self._pending.extendleft(reversed(batch))
                    self._failed(exc)
                return
            with self._lock:
                self._recovered()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.flush_interval + 5)
        self.flush()


class _Discard(io.StringIO):
    """The stream the base class would write to: nothing goes there."""

    def write(self, s: str) -> int:
        return len(s)


def export(engine: Engine, since: float | None = None) -> Iterator[str]:
    """Every node's records in time order, one JSON line each, with the node that wrote it."""
    stmt = select(audit_events.c.record, audit_events.c.node).order_by(
        audit_events.c.at, audit_events.c.id
    )
    if since is not None:
        stmt = stmt.where(audit_events.c.at >= since)
    with engine.connect() as conn:
        for record, node in conn.execution_options(stream_results=True).execute(stmt):
            text = str(record)
            yield f"{text[:-1]},\"node\":{json.dumps(node)}}}" if text.endswith("}") else text


def query(
    engine: Engine, after: int, filters: dict[str, str], since: str | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Records after row id `after` that match (every node's, oldest first), and the id to go
    on from (None: no more). `filters` compare record fields; `since` an ISO 8601 time."""
    stmt = select(audit_events.c.id, audit_events.c.record, audit_events.c.node)
    stmt = stmt.order_by(audit_events.c.id).limit(BATCH)
    if "event" in filters:
        stmt = stmt.where(audit_events.c.event == filters["event"])
    out: list[dict[str, Any]] = []
    last = after
    with engine.connect() as conn:
        while True:  # in batches: a read connection may have no transaction to stream in
            rows = conn.execute(stmt.where(audit_events.c.id > last)).all()
            if not rows:
                return out, None
            for row_id, text, node in rows:
                last = int(row_id)
                record = _parsed(text)
                if record is None or any(record.get(k) != v for k, v in filters.items()):
                    continue
                if since and str(record.get("ts", "")) < since:
                    continue
                out.append({**record, "node": node})
                if len(out) >= limit:
                    return out, last


def _parsed(text: str) -> dict[str, Any] | None:
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
