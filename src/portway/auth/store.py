"""Users, roles and refresh tokens in the metadata database (SQLAlchemy Core, sync engines).

Reads go through the read engine, each in one snapshot (on SQLite a deferred `BEGIN`: in WAL
mode it never takes or waits for the write lock; see portway.db.dialect), so logins, tokens and
role checks go on while another process writes; changes go through the write engine.
"""

from __future__ import annotations

from portway.auth.users_store import UserRecords


class UserStore(UserRecords):
    """Users (portway.auth.users_store), roles (portway.auth.roles_store) and refresh tokens
    (portway.auth.refresh_store), over the engines and snapshot of portway.auth.store_base."""
