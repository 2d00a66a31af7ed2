"""What `portway doctor --cluster` compares between nodes: `GET /readyz?node=1` as admin.

Nodes behind one front door must serve the same repositories with the same security, on the
same database and blob store, and verify each other's tokens. Each node reports:

- `settings`: a fingerprint (16 hex digits of SHA-256) per configuration table that must be
  the same on every node: `repository`, `host`, `connector`, `security`, `database` (the URL
  without its password), `storage`, and `server` without what is each node's own (listen
  address, data directory, workers, TLS files, logging, health-check interval);
- `signing_keys`: the key ids (public thumbprints, as every token's header carries) this
  node verifies with, and the one it signs with;
- `time`: the node's clock (seconds since the epoch), beside the Date header;
- `version`: Portway's version.

Nothing secret leaves the node: fingerprints, not values. Without admin credentials the
answer is the plain readiness report.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from portway import __version__
from portway.config import Settings

# [server] keys that are each node's own, left out of its fingerprint.
NODE_OWN = frozenset(
    {"listen", "data_dir", "workers", "tls", "log_level", "log_format", "access_log",
     "metrics", "health_check_interval"}
)  # fmt: skip
TABLES = ("repository", "host", "connector", "security", "database", "storage", "server")


def _fingerprint(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def without_password(url: str) -> str:
    """The URL with its password (if any) left out, for logs and fingerprints."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[2]}"))


def settings_fingerprints(settings: Settings) -> dict[str, str]:
    doc = settings.model_dump(mode="json")
    doc["server"] = {k: v for k, v in doc["server"].items() if k not in NODE_OWN}
    doc["database"] = {**doc["database"], "url": without_password(settings.database.url)}
    return {table: _fingerprint(doc[table]) for table in TABLES}


def signing_keys(ring: Any) -> dict[str, Any]:
    """The kids a key ring verifies with and the one it signs with (duck-typed: the folder
    ring and a database-backed one answer the same two calls)."""
    if ring is None:
        return {"current": None, "kids": []}
    reload = getattr(ring, "reload_if_changed", None)
    if reload is not None:
        reload()
    current = ring.current  # a property of the folder ring
    current = current() if callable(current) else current
    return {"current": current.kid, "kids": sorted(ring.kids())}


def node_report(settings: Settings, ring: Any) -> dict[str, Any]:
    return {
        "version": __version__,
        "settings": settings_fingerprints(settings),
        "signing_keys": signing_keys(ring),
        "time": time.time(),
    }
