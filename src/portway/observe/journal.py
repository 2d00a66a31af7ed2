"""What the observe middleware saw of each answered request, kept as one tuple and turned into
metric counts and access-log lines in batches.

Per request the middleware only gathers what it cannot learn later (the status, the byte
counts, the duration, the client, the principal) and appends one tuple. Everything that can
wait (the route kind, the repository label, the counting, the line's text) is done by
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

from portway.observe.accesslog import FLUSH_INTERVAL, AccessLog, Entry
from portway.observe.kinds import DISTRIBUTION_HANDLER, public_kind, route_kind
from portway.observe.metrics import Recorder

__all__ = ["FLUSH_INTERVAL", "Journal", "Row", "Where"]

# path, method, status, where (the route table's match as (repository, rest), or None: two
# strings rather than the Route, so that what waits for a drain holds no object the garbage
# collector must walk), perf_counter() at the end, seconds, bytes in, bytes out, request id,
# client, principal, user agent
Where = tuple["str | None", str] | None
Row = tuple[
    str, str, int, Where, float, float, int, int, str, "str | None", "str | None", "str | None"
]
RepositoryOf = Callable[[Where, str], "str | None"]  # (where, path) -> repository name


class Journal:
    def __init__(
        self, recorder: Recorder | None, access: AccessLog | None, repository_of: RepositoryOf
    ) -> None:
        self.recorder = recorder
        self.access = access
        self.repository_of = repository_of
        self.rows: list[Row] = []  # one per answered request, appended by the middleware
        self.live: dict[int, str] = {}  # id(request) -> path, while it is being answered

    def drain(self) -> None:
        """Count and log every request noted since the last drain; write the lines out."""
        rows = self.rows[:]
        del self.rows[:]  # in place: the middleware holds `rows.append`
        recorder, access = self.recorder, self.access
        logging = access is not None and access.enabled()
        if rows and (recorder is not None or logging):
            wall, perf = time.time(), time.perf_counter()
            repository_of = self.repository_of
            # Most rows of a drain repeat a few paths: each is looked at once per drain (not
            # kept longer, since repositories may be created or removed meanwhile).
            seen: dict[tuple[str, Where], tuple[str, str | None]] = {}
            for row in rows:
                path, method, status, where, end, seconds, b_in, b_out, rid, client, who, ua = row
                key = (path, where)
                known = seen.get(key)
                if known is None:
                    known = seen[key] = (route_kind(path), repository_of(where, path))
                kind, repository = known
                if recorder is not None:
                    recorder.record(kind, method, status, repository, seconds, b_in, b_out)
                if logging:
                    assert access is not None
                    entry = Entry(rid, client, who, repository, method, path, public_kind(kind),
                                  status, b_in, b_out, seconds, ua)  # fmt: skip
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
