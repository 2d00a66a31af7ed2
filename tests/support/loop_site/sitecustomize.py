"""Imported at the start of a `portway serve` process whose PYTHONPATH names this folder
(see tests/test_pg_event_loop.py): every SQL statement the process runs is written as one
JSON line to the file `PORTWAY_SQL_WATCH` names, with whether the thread that ran it was
running an event loop and the Portway frames that made it. A statement with `on_loop` true
is the event loop waiting for the database."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import traceback
from typing import Any

_OUT = os.environ.get("PORTWAY_SQL_WATCH")
_LOCK = threading.Lock()


def _record(kind: str, detail: str) -> None:
    if _OUT is None:
        return
    on_loop = asyncio._get_running_loop() is not None
    frames = [
        f"{f.filename.rpartition('/portway/')[2]}:{f.lineno} {f.name}"
        for f in traceback.extract_stack()[:-2]
        if "/portway/" in f.filename
    ]
    thread = threading.current_thread().name
    line = json.dumps(
        {"kind": kind, "sql": detail[:120], "on_loop": on_loop, "thread": thread, "stack": frames}
    )
    with _LOCK, open(_OUT, "a", encoding="utf-8") as out:
        out.write(line + "\n")


def _install() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    def statement(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        _record("statement", sql)

    def checkout(_dbapi: Any, _connection_record: Any, _proxy: Any) -> None:
        _record("checkout", "")

    event.listen(Engine, "before_cursor_execute", statement)
    event.listen(Pool, "checkout", checkout)


if _OUT is not None:
    _install()
