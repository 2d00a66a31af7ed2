"""Audit log: one JSON object per line for logins, tokens, pushes, deletes, security changes.

Fields: `ts` (RFC 3339, UTC), `event` (e.g. `login`, `token.issue`, `user.disable`), `principal`,
`client`, `repository`, `outcome` (`success`, `failure`, `denied`, `locked`...), `detail`.

Secrets never reach the file: detail keys that name a secret (password, token, secret,
authorization, credential, ...) are replaced by "[redacted]", and any string value that looks
like a JWT or an HTTP credential (`Basic ...`, `Bearer ...`) is redacted wherever it appears.

A record that cannot be written (a full disk, a read-only file system) never fails the request
it describes: the failure is logged once a minute with how many records were lost, `healthy`
turns False (for a readiness check or a metric to read) and `lost` counts them; the next record
that can be written turns it back, and says so in the log.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger("portway.audit")
REDACTED = "[redacted]"
FAILURE_LOG_INTERVAL = 60.0  # seconds between log lines while records cannot be written
_SECRET_KEY_RE = re.compile(
    r"pass|pwd|token|secret|authori[sz]ation|credential|cookie|private|api[-_]?key|signature",
    re.IGNORECASE,
)
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_HTTP_CRED_RE = re.compile(r"\b(Basic|Bearer)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_MAX_STRING = 1024
_MAX_DEPTH = 4


def scrub(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of `value` with secrets redacted (see the module docstring)."""
    if depth > _MAX_DEPTH:
        return "[...]"
    if isinstance(value, Mapping):
        return {
            str(k)[:128]: REDACTED if _SECRET_KEY_RE.search(str(k)) else scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [scrub(v, depth + 1) for v in items]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _scrub_text(str(value))


def _scrub_text(text: str) -> str:
    text = _JWT_RE.sub(REDACTED, text)
    text = _HTTP_CRED_RE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return text[:_MAX_STRING]


class AuditLog:
    """Append-only writer. Give it a path (created mode 0640) or an open text stream."""

    def __init__(
        self,
        target: Path | TextIO,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.healthy = True  # False while records cannot be written
        self.lost = 0  # records that could not be written, since the start
        self._lost_unreported = 0
        self._reported_at = -FAILURE_LOG_INTERVAL
        self._torn = False  # the last failed write left part of a line in the file
        self._path: Path | None = None
        self._stream: TextIO | None = None
        if isinstance(target, Path):
            self._path = target
            target.parent.mkdir(parents=True, exist_ok=True)
        else:
            self._stream = target

    def write(
        self,
        event: str,
        *,
        principal: str | None = None,
        client: str | None = None,
        repository: str | None = None,
        outcome: str = "success",
        detail: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one record; returns it (as written) for tests and for forwarding."""
        ts = datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="milliseconds")
        record: dict[str, Any] = {
            "ts": ts.replace("+00:00", "Z"),
            "event": _scrub_text(event),
            "principal": None if principal is None else _scrub_text(principal),
            "client": None if client is None else _scrub_text(client),
            "repository": None if repository is None else _scrub_text(repository),
            "outcome": _scrub_text(outcome),
            "detail": scrub(dict(detail or {})),
        }
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n"
        with self._lock:
            try:
                self._append(line)
            except (OSError, ValueError) as exc:  # ValueError: a closed stream
                self._failed(exc)
            else:
                self._recovered()
        return record

    def _append(self, line: str) -> None:
        if self._torn:
            line = "\n" + line  # end the cut-off line first: readers skip it, not this one
        if self._stream is not None:
            self._stream.write(line)
            self._stream.flush()
            self._torn = False
            return
        assert self._path is not None
        data = line.encode()
        # One write(2) of one line on an O_APPEND descriptor: workers sharing the file never
        # interleave within a line.
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written < len(data):  # the disk filled up in the middle of the line
            self._torn = True
            raise OSError(28, "No space left on device (the line was cut)")
        self._torn = False

    def _failed(self, exc: BaseException) -> None:
        self.healthy = False
        self.lost += 1
        self._lost_unreported += 1
        now = time.monotonic()
        if now - self._reported_at >= FAILURE_LOG_INTERVAL:
            log.error(
                "audit log %s cannot be written (%s): %d record(s) lost since the last "
                "report; requests are served regardless",
                self._path or "stream",
                exc,
                self._lost_unreported,
            )
            self._reported_at = now
            self._lost_unreported = 0

    def _recovered(self) -> None:
        if self.healthy:
            return
        self.healthy = True
        log.warning(
            "audit log %s is written again; %d record(s) were lost in all",
            self._path or "stream",
            self.lost,
        )
        self._reported_at = -FAILURE_LOG_INTERVAL
        self._lost_unreported = 0
