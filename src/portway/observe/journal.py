"""What the observe middleware saw of each answered request, kept as one tuple and turned into
metric counts and access-log lines in batches.

Per request the middleware only notes what it cannot learn later (the status, the bytes sent,
the duration) with the finished request, in one tuple. Everything else (the route kind, the
repository, the client, the principal, the counting, the line's text) is done by
`drain()`, for every request of the last `FLUSH_INTERVAL` seconds at once: the same work in a
tight loop costs a fraction of what it costs spread over requests, whose own code has pushed
it out of the processor's caches in between (docs/benchmarks.md, "Metrics and access log,
measured in pairs"). Requests being answered are kept by the request object's id (an id a
proxy sent may come twice), so the in-flight gauges can be counted by route kind at each
metrics flush.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from portway.observe.accesslog import FLUSH_INTERVAL, AccessLog, Entry
from portway.observe.kinds import DISTRIBUTION_HANDLER, public_kind, route_kind
from portway.observe.metrics import Recorder

__all__ = ["FLUSH_INTERVAL", "Journal", "Row"]

# the request, its path, status, perf_counter() at the end, seconds, bytes out, request id
Row = tuple[Any, str, int, float, float, int, str]
# (request, path) -> (method, repository, bytes in)
Facts = Callable[[Any, str], tuple[str, "str | None", int]]
# request -> (client, principal, user agent), for the access log
People = Callable[[Any], tuple["str | None", "str | None", "str | None"]]


class Journal:
    def __init__(
        self, recorder: Recorder | None, access: AccessLog | None, facts: Facts, people: People
    ) -> None:
        self.recorder = recorder
        self.access = access
        self.facts = facts
        self.people = people
        self.rows: list[Row] = []  # one per answered request, appended by the middleware
        self.live: dict[int, str] = {}  # id(request) -> path, while it is being answered

    def drain(self) -> None:
        """Count and log every request noted since the last drain; write the lines out.
        The requests are finished: what is read from them here no longer changes."""
        rows = self.rows[:]
        del self.rows[:]  # in place: the middleware holds `rows.append`
        recorder, access = self.recorder, self.access
        logging = access is not None and access.enabled()
        if rows and (recorder is not None or logging):
            wall, perf = time.time(), time.perf_counter()
            facts, people = self.facts, self.people
            for request, path, status, end, seconds, sent, rid in rows:
                kind = route_kind(path)
                method, repository, received = facts(request, path)
                if recorder is not None:
                    recorder.record(kind, method, status, repository, seconds, received, sent)
                if logging:
                    assert access is not None
                    client, who, agent = people(request)
                    entry = Entry(rid, client, who, repository, method, path, public_kind(kind),
                                  status, received, sent, seconds, agent)  # fmt: skip
                    access.write(entry, wall - (perf - end))
        if access is not None:
            access.flush()

    def count_in_flight(self) -> None:
        """Set the recorder's in-flight counts (by distribution handler) from the requests
        being answered now."""
        if self.recorder is None:
            return
        counts = dict.fromkeys(DISTRIBUTION_HANDLER.values(), 0)
        counts[""] = 0
        for path in list(self.live.values()):
            handler = DISTRIBUTION_HANDLER.get(route_kind(path), "")
            counts[handler] += 1
        self.recorder.in_flight = counts
