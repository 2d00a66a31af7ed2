"""Tables of the auth domain: users, roles, privileges, refresh tokens. On the shared metadata."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from portway.db.schema import BigId, metadata

users = Table(
    "users",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("password_hash", String(255), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("password_changed", DateTime(timezone=True), nullable=False),
)

roles = Table(
    "roles",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("description", Text, nullable=False, default=""),
    Column("builtin", Boolean, nullable=False, default=False),
)

role_privileges = Table(
    "role_privileges",
    metadata,
    Column("role", String(64), ForeignKey("roles.name", ondelete="CASCADE"), primary_key=True),
    # a repository name or a pattern with '*' wildcards
    Column("repository", String(128), primary_key=True),
    # browse | read | add | edit | delete
    Column("action", String(16), primary_key=True),
)

role_admin_privileges = Table(
    "role_admin_privileges",
    metadata,
    Column("role", String(64), ForeignKey("roles.name", ondelete="CASCADE"), primary_key=True),
    # users | roles | repositories | settings | audit | *
    Column("privilege", String(32), primary_key=True),
)

role_includes = Table(
    "role_includes",
    metadata,
    Column("role", String(64), ForeignKey("roles.name", ondelete="CASCADE"), primary_key=True),
    Column("included", String(64), primary_key=True),
)

user_roles = Table(
    "user_roles",
    metadata,
    Column("username", String(128), ForeignKey("users.name", ondelete="CASCADE"), primary_key=True),
    Column("role", String(64), ForeignKey("roles.name", ondelete="CASCADE"), primary_key=True),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("username", String(128), ForeignKey("users.name", ondelete="CASCADE"), nullable=False),
    Column("repository", String(128), nullable=False),
    Column("issued", DateTime(timezone=True), nullable=False),
    Column("expires", DateTime(timezone=True), nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
    Index("ix_refresh_tokens_username", "username"),
    Index("ix_refresh_tokens_expires", "expires"),
)

# One row: how many times users or roles changed. Workers compare it with the value they saw
# when they cached a login, so a disabled user or a changed role takes effect at once.
security_state = Table(
    "security_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("generation", BigInteger, nullable=False, default=0),
)

# One row per failed login, shared by every worker (and every node on a shared database):
# the limiter counts an address's rows and a (user, address) pair's rows within its window.
# `cleared`: a later success (or `portway user unlock`) forgave it for the pair, not for the
# address. Rows older than the window are deleted as failures come in.
login_failures = Table(
    "login_failures",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("address", String(64), nullable=False),
    Column("username", String(256), nullable=False),
    Column("at", Float, nullable=False),
    Column("cleared", Boolean, nullable=False, default=False),
    Index("ix_login_failures_address_at", "address", "at"),
    Index("ix_login_failures_username", "username"),
    Index("ix_login_failures_at", "at"),
)
