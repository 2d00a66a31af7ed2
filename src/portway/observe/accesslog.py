"""The access log: one line per answered request, on the `portway.access` logger at INFO.

Text (the default) goes through the server's log format like every other line; with
`[server] log_format = "json"` each line is one JSON object alone on its line (no prefix), to
stderr beside the other logs, for a log shipper to parse. Fields:

  ts, request_id, client, principal, repository, method, path, route, status,
  bytes_in, bytes_out, duration_ms, user_agent

`request_id` is also the `X-Request-Id` response header; one sent by a trusted proxy is kept.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass

LOGGER = "portway.access"
HEADER = "X-Request-Id"
_ID_RE = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_MAX_PATH = 512


class RequestIds:
    """Ids unique across workers and restarts: a random prefix per process and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._next = itertools.count(1).__next__

    def new(self) -> str:
        return f"{self._prefix}-{self._next():x}"

    @staticmethod
    def acceptable(value: str | None) -> bool:
        return value is not None and _ID_RE.match(value) is not None


@dataclass(slots=True)
class Entry:
    request_id: str
    client: str | None
    principal: str | None
    repository: str | None
    method: str
    path: str
    route: str
    status: int
    bytes_in: int
    bytes_out: int
    seconds: float
    user_agent: str | None


class AccessLog:
    def __init__(self, log_format: str) -> None:
        self.logger = logging.getLogger(LOGGER)
        self.json = log_format == "json"
        if self.json:
            _own_handler(self.logger)

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def write(self, e: Entry) -> None:
        path = e.path if len(e.path) <= _MAX_PATH else e.path[:_MAX_PATH] + "..."
        ms = round(e.seconds * 1000, 3)
        if self.json:
            now = time.time()
            ts = (
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                + f".{int(now % 1 * 1000):03d}Z"
            )
            line = json.dumps(
                {
                    "ts": ts,
                    "request_id": e.request_id,
                    "client": e.client,
                    "principal": e.principal,
                    "repository": e.repository,
                    "method": e.method,
                    "path": path,
                    "route": e.route,
                    "status": e.status,
                    "bytes_in": e.bytes_in,
                    "bytes_out": e.bytes_out,
                    "duration_ms": ms,
                    "user_agent": e.user_agent,
                },
                separators=(",", ":"),
            )
        else:
            line = (
                f'{e.client or "-"} {e.principal or "-"} "{e.method} {path}" {e.status} '
                f"in={e.bytes_in} out={e.bytes_out} {ms}ms route={e.route} "
                f"repository={e.repository or '-'} id={e.request_id} "
                f'agent="{(e.user_agent or "-")[:200]}"'
            )
        self.logger.info(line)


def _own_handler(logger: logging.Logger) -> None:
    """JSON lines stand alone: their own handler, no prefix, not repeated by the root's."""
    for handler in logger.handlers:
        if getattr(handler, "_portway_json", False):
            return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._portway_json = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False
