"""The access log: one line per answered request, on the `portway.access` logger at INFO.

Text (the default) has the server's log prefix like every other line; with
`[server] log_format = "json"` each line is one JSON object alone on its line (no prefix).
Both go to stderr beside the other logs, written in batches (at most 0.2 s late). The
logger's level decides whether they are written (`log_level = "warning"`: none). Fields:

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
from typing import TextIO

LOGGER = "portway.access"
HEADER = "X-Request-Id"
_ID_RE = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_MAX_PATH = 512
FLUSH_INTERVAL = 0.2  # seconds a line may wait in memory
FLUSH_LINES = 512  # ...or until this many wait
_quote = json.encoder.encode_basestring_ascii  # what json.dumps writes for a str


def _js(value: str | None) -> str:
    return "null" if value is None else _quote(value)


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
    """Lines are gathered in memory and written together by `flush()` (every
    `FLUSH_INTERVAL` seconds, or sooner once `FLUSH_LINES` wait): the logging module's
    per-record cost (a record, a formatter, a write and a flush each) was most of the
    access log's price on the manifest GET hot path (docs/adr/0016)."""

    def __init__(self, log_format: str, stream: TextIO | None = None, on: bool = True) -> None:
        self.json = log_format == "json"
        self.stream = stream if stream is not None else sys.stderr
        self.on = on
        self.level_on = on and logging.getLogger(LOGGER).isEnabledFor(logging.INFO)
        self._lines: list[str] = []
        self._prefix_at = -1
        self._prefix = ""
        self._utc_at = -1
        self._utc = ""
        self._tail = f" INFO {LOGGER}[{os.getpid()}]: "

    def enabled(self) -> bool:
        return self.level_on

    def reconfigure(self, log_format: str, on: bool) -> None:
        """SIGHUP: the format, and whether lines are written at all, as the file now says."""
        self.flush()
        self.json = log_format == "json"
        self.on = on
        self.level_on = on and logging.getLogger(LOGGER).isEnabledFor(logging.INFO)

    def _text_prefix(self, now: float) -> str:
        second = int(now)
        if second != self._prefix_at:  # logging's default asctime, cached per second
            self._prefix_at = second
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._prefix},{int(now % 1 * 1000):03d}{self._tail}"

    def write(self, e: Entry, now: float | None = None) -> None:
        """Gather the line of `e`, answered at `now` (time.time(); by default: now)."""
        path = e.path if len(e.path) <= _MAX_PATH else e.path[:_MAX_PATH] + "..."
        ms = round(e.seconds * 1000, 3)
        if now is None:
            now = time.time()
        if self.json:
            # The text json.dumps(..., separators=(",", ":")) gives for these fields, written
            # out: a third of the cost (json.dumps builds an encoder per call).
            second = int(now)
            if second != self._utc_at:
                self._utc_at = second
                self._utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            line = (
                f'{{"ts":"{self._utc}.{int(now % 1 * 1000):03d}Z",'
                f'"request_id":{_quote(e.request_id)},"client":{_js(e.client)},'
                f'"principal":{_js(e.principal)},"repository":{_js(e.repository)},'
                f'"method":{_quote(e.method)},"path":{_quote(path)},"route":{_quote(e.route)},'
                f'"status":{int(e.status)},"bytes_in":{int(e.bytes_in)},'
                f'"bytes_out":{int(e.bytes_out)},"duration_ms":{float(ms)!r},'
                f'"user_agent":{_js(e.user_agent)}}}'
            )
        else:
            agent = (e.user_agent or "-")[:200].replace('"', "'")
            line = (
                f"{self._text_prefix(now)}{e.client or '-'} {e.principal or '-'} "
                f'"{e.method} {path}" {e.status} in={e.bytes_in} out={e.bytes_out} {ms}ms '
                f"route={e.route} repository={e.repository or '-'} id={e.request_id} "
                f'agent="{agent}"'
            )
        self._lines.append(line)
        if len(self._lines) >= FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or full log stream never fails a request
            pass
