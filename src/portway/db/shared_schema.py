"""Tables for what the nodes of a cluster share besides images: leases, signing keys, the
audit log, proxy repositories' upstream health and the web UI's session key (ADR 0021,
ADR 0022)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, String, Table, Text

from portway.db.schema import BigId, metadata

# A lease: one holder at a time for a named job; `token` grows by one at every take-over, so
# a holder that lost the lease (paused, partitioned) can be fenced off by its old token.
leases = Table(
    "leases",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("token", BigInteger, nullable=False),
    Column("expires", Float, nullable=False),
)

# Token signing keys of a cluster: every node signs with the current one and verifies with
# all of them. `pem` is the PKCS#8 private key; `current` marks the one that signs.
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("algorithm", String(8), nullable=False),
    Column("pem", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("current", Integer, nullable=False, default=0),
)

# The audit log of every node: one row per record, `record` its JSON line.
audit_events = Table(
    "audit_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("node", String(128), nullable=False),
    Column("event", String(64), nullable=False),
    Column("record", Text, nullable=False),
    Index("ix_audit_events_at", "at"),
)

# A proxy repository's circuit breaker as the node that saw the failures last left it.
proxy_breakers = Table(
    "proxy_breakers",
    metadata,
    Column("repository", String(64), primary_key=True),
    Column("consecutive_failures", Integer, nullable=False),
    Column("blocked_until", Float),
    Column("last_error", Text),
    Column("last_error_at", Float),
    Column("node", String(128), nullable=False),
    Column("updated", Float, nullable=False),
)

# A proxy repository's negative cache: "the upstream has no such manifest" until `expires`.
proxy_negative = Table(
    "proxy_negative",
    metadata,
    Column("repository", String(64), primary_key=True),
    Column("image", String(255), primary_key=True),
    Column("reference", String(160), primary_key=True),
    Column("expires", Float, nullable=False),
    Index("ix_proxy_negative_expires", "expires"),
)

# Secrets every node of a cluster needs the same copy of, by name: `ui-session`, the key that
# signs the web UI's session cookies (base64 in `value`).
shared_secrets = Table(
    "shared_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("created", Float, nullable=False),
)

# What each node's workers see of the connectors they serve (ADR 0032): one row per node and
# `listen` address, written again on a change and every few seconds while the node runs, so
# an `updated` long past names a node that stopped.
connector_states = Table(
    "connector_states",
    metadata,
    Column("node", String(128), primary_key=True),
    Column("listen", String(255), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("detail", Text),
    Column("updated", Float, nullable=False),
)
