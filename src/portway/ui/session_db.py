"""The web UI's session key in the metadata database, for a cluster (ADR 0026, as ADR 0022
does for signing keys).

Behind a front door without affinity the next request of a browser may land on any node, so
every node must sign and check session cookies with one key. On PostgreSQL the key is the
`ui-session` row of `shared_secrets`; `<data_dir>/ui-session.key` is only read by the first
node to find no row, which stores its file's key (so the sessions that node signed before the
upgrade stay valid) or a new one. Two nodes starting together both try to insert; the
primary key lets one win and the other reads the winner's key.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import time
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from portway.db.shared_schema import shared_secrets as table

log = logging.getLogger("portway.ui")
NAME = "ui-session"
KEY_BYTES = 32


def _stored(engine: Engine) -> bytes | None:
    with engine.connect() as conn:
        value = conn.execute(select(table.c.value).where(table.c.name == NAME)).scalar()
    if value is None:
        return None
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise RuntimeError(
            f"the {NAME!r} row of shared_secrets is not a {KEY_BYTES}-byte key: delete it "
            "to make a new one (everyone signs in again)"
        )
    return key


def _file_key(data_dir: Path) -> bytes | None:
    try:
        key = (data_dir / "ui-session.key").read_bytes()
    except OSError:
        return None
    return key if len(key) == KEY_BYTES else None


def shared_key(engine: Engine, data_dir: Path) -> bytes:
    """The cluster's session key, stored by the first node that needs it."""
    key = _stored(engine)
    if key is not None:
        return key
    key = _file_key(data_dir)
    moved = key is not None
    if key is None:
        key = secrets.token_bytes(KEY_BYTES)
    row = {"name": NAME, "value": base64.b64encode(key).decode(), "created": time.time()}
    try:
        with engine.begin() as conn:
            conn.execute(table.insert().values(**row))
    except IntegrityError:
        pass  # another node (or worker) stored one first: use it
    else:
        what = "its ui-session.key moved" if moved else "a new key stored"
        log.info("web UI sessions: one key for every node, %s into the database", what)
    stored = _stored(engine)
    assert stored is not None
    return stored
