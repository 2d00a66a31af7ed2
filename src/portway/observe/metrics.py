"""Prometheus metrics, shared by every worker through prometheus-client's multiprocess files.

Requests are counted in plain numbers in this process (`Recorder.record`, called for each
request by portway.observe.journal's batches: a dict lookup and a few additions, no lock, no
file write); `flush()` moves them into the metric files about once a second and before each
scrape. So a worker killed with SIGKILL loses at most its last second of counts, and the hot
path stays cheap (bench/observe_cost.py).

Names follow Prometheus conventions (units in names, `_total` on counters). Beside
Portway's own `portway_*` families, distribution's `registry_http_*` set is kept under the
same names and labels (`code`, `handler`, `method`) so its dashboards work unchanged.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from portway.observe import multiproc
from portway.observe.kinds import DISTRIBUTION_HANDLER, public_kind

FLUSH_INTERVAL = 1.0  # seconds between moves into the metric files
OTHER = "_other"  # the repository label past the label budget
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, math.inf,
)  # fmt: skip
SIZE_BUCKETS = (*(float(1024 * 4**i) for i in range(10)), math.inf)  # 1 KiB .. 256 MiB


class ProxyEvents:
    """What proxy repositories did since the last flush, counted in plain numbers (the
    repositories call these from the request path; `Recorder.flush` moves them into files)."""

    def __init__(self) -> None:
        self.hits: dict[tuple[str, str], int] = {}  # (repository, "manifest"|"blob") -> n
        self.misses: dict[tuple[str, str], int] = {}
        self.errors: dict[tuple[str, str], int] = {}  # (repository, upstream error kind) -> n

    def hit(self, repository: str, what: str) -> None:
        """Answered from the cache without asking the upstream."""
        self.hits[(repository, what)] = self.hits.get((repository, what), 0) + 1

    def miss(self, repository: str, what: str) -> None:
        """Not in the cache (or a tag due for a re-check): the upstream was asked."""
        self.misses[(repository, what)] = self.misses.get((repository, what), 0) + 1

    def error(self, repository: str, kind: str) -> None:
        """An upstream request of a client's request failed (`UpstreamError.kind`)."""
        self.errors[(repository, kind)] = self.errors.get((repository, kind), 0) + 1

    def take(
        self,
    ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int], dict[tuple[str, str], int]]:
        taken = self.hits, self.misses, self.errors
        self.hits, self.misses, self.errors = {}, {}, {}
        return taken


proxy_events = ProxyEvents()  # this process's; counted whether or not metrics are on


class _Slot:
    """What one (kind, method, status, repository label) did since the last flush."""

    __slots__ = ("bytes_in", "bytes_out", "count", "durations", "in_sizes", "out_sizes", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.durations = [0] * len(DURATION_BUCKETS)
        self.in_sizes = [0] * len(SIZE_BUCKETS)
        self.out_sizes = [0] * len(SIZE_BUCKETS)


def _open_value_files(folder: Path) -> None:
    """Point prometheus-client at `folder` before any metric exists in this process."""
    from prometheus_client import values

    os.environ[multiproc.ENV] = str(folder)
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class Recorder:
    """This worker's metrics. `repositories` in configuration order; the first
    `repository_labels` of them get their own label, the rest count as "_other"."""

    def __init__(self, folder: Path, repositories: Iterable[str], repository_labels: int) -> None:
        self.folder = multiproc.prepare(folder)
        _open_value_files(self.folder)
        from prometheus_client import Counter, Gauge, Histogram

        self._labels = {name: name for name in list(repositories)[:repository_labels]}
        self._pending: dict[tuple[str, str, int, str | None], _Slot] = {}
        self.in_flight: dict[str, int] = {}  # distribution handler (or "") -> requests now
        self._faults_seen: dict[str, int] = {}
        c, g, h = Counter, Gauge, Histogram
        self.requests = c(
            "portway_http_requests",
            "HTTP requests answered, by route kind, method and status",
            ["route", "method", "status"],
            registry=None,
        )
        self.duration = h(
            "portway_http_request_duration_seconds",
            "Time from the request's arrival to the last byte of its answer",
            ["route", "method"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.received = c(
            "portway_http_received_bytes", "Request body bytes read", ["route"], registry=None
        )
        self.sent = c(
            "portway_http_sent_bytes", "Response body bytes sent", ["route"], registry=None
        )
        self.flight = g(
            "portway_http_in_flight_requests",
            "Requests being served",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.repo_requests = c(
            "portway_repository_requests",
            'HTTP requests per repository (past the label budget: repository="_other")',
            ["repository", "route"],
            registry=None,
        )
        self.repo_received = c(
            "portway_repository_received_bytes",
            "Request body bytes read per repository",
            ["repository"],
            registry=None,
        )
        self.repo_sent = c(
            "portway_repository_sent_bytes",
            "Response body bytes sent per repository",
            ["repository"],
            registry=None,
        )
        self.uploads_started = c(
            "portway_upload_sessions_started",
            "Blob upload sessions opened (a monolithic upload or a mount counts too)",
            ["repository"],
            registry=None,
        )
        self.uploads_finished = c(
            "portway_upload_sessions_finished",
            "Blob upload sessions ended: completed or cancelled",
            ["repository", "outcome"],
            registry=None,
        )
        self.refused = c(
            "portway_refused_requests",
            "Requests refused for a fault of the machine (storage_full, database_busy)",
            ["reason"],
            registry=None,
        )
        self.damaged = c(
            "portway_storage_damaged_blob_requests",
            "Requests refused because the blob's file is missing or not its recorded size",
            registry=None,
        )
        self.upstream_blocked = g(
            "portway_proxy_upstream_blocked",
            "1 while a proxy repository's circuit breaker blocks its upstream (any worker)",
            ["repository"],
            registry=None,
            multiprocess_mode="livemax",
        )
        self.upstream_failures = g(
            "portway_proxy_upstream_consecutive_failures",
            "Failures in a row of a proxy repository's upstream (the highest of the workers)",
            ["repository"],
            registry=None,
            multiprocess_mode="livemax",
        )
        self.proxy_hits = c(
            "portway_proxy_cache_hits",
            "Proxy requests answered from the cache without asking the upstream",
            ["repository", "type"],
            registry=None,
        )
        self.proxy_misses = c(
            "portway_proxy_cache_misses",
            "Proxy requests that asked the upstream (not cached, or a tag due for a re-check)",
            ["repository", "type"],
            registry=None,
        )
        self.proxy_errors = c(
            "portway_proxy_upstream_errors",
            "Proxy requests whose upstream request failed, by kind of failure",
            ["repository", "kind"],
            registry=None,
        )
        self.check_up = g(
            "portway_health_check_up",
            "1 when the health check passed at its "
            "last run, 0 when it failed (the lowest of the workers)",
            ["check"],
            registry=None,
            multiprocess_mode="livemin",
        )
        self.check_seconds = g(
            "portway_health_check_duration_seconds",
            "How long the health check's last run took (the highest of the workers)",
            ["check"],
            registry=None,
            multiprocess_mode="livemax",
        )
        # distribution's names (registry/handlers, docker/go-metrics)
        self.reg_requests = c(
            "registry_http_requests",
            "Total number of HTTP requests made.",
            ["code", "handler", "method"],
            registry=None,
        )
        self.reg_duration = h(
            "registry_http_request_duration_seconds",
            "The HTTP request latencies in seconds.",
            ["handler", "method"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.reg_in_size = h(
            "registry_http_request_size_bytes",
            "The HTTP request sizes in bytes.",
            ["handler"],
            buckets=SIZE_BUCKETS,
            registry=None,
        )
        self.reg_out_size = h(
            "registry_http_response_size_bytes",
            "The HTTP response sizes in bytes.",
            ["handler"],
            buckets=SIZE_BUCKETS,
            registry=None,
        )
        self.reg_flight = g(
            "registry_http_in_flight_requests",
            "The in-flight HTTP requests",
            ["handler"],
            registry=None,
            multiprocess_mode="livesum",
        )
        for handler in DISTRIBUTION_HANDLER.values():
            self.reg_flight.labels(handler).set(0)
        self.flight.set(0)
        from portway.observe.job_metrics import JobFamilies
        from portway.observe.store_latency import LatencyFamilies

        self.jobs = JobFamilies()  # what the maintenance jobs this worker ran did
        self.latency = LatencyFamilies()  # how long database and blob storage calls took

    def repository_label(self, name: str) -> str:
        return self._labels.get(name, OTHER)

    def record(
        self,
        kind: str,
        method: str,
        status: int,
        repository: str | None,
        seconds: float,
        bytes_in: int,
        bytes_out: int,
    ) -> None:
        """One answered request (the hot path: no lock, no I/O)."""
        label = None if repository is None else self._labels.get(repository, OTHER)
        key = (kind, method, status, label)
        slot = self._pending.get(key)
        if slot is None:
            slot = self._pending[key] = _Slot()
        slot.count += 1
        slot.seconds += seconds
        slot.durations[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        slot.bytes_in += bytes_in
        slot.bytes_out += bytes_out
        if kind in DISTRIBUTION_HANDLER:
            slot.in_sizes[bisect.bisect_left(SIZE_BUCKETS, bytes_in)] += 1
            slot.out_sizes[bisect.bisect_left(SIZE_BUCKETS, bytes_out)] += 1

    def flush(self) -> None:
        """Move what `record` gathered into the metric files."""
        pending, self._pending = self._pending, {}
        for (kind, method, status, repo), slot in pending.items():
            route = public_kind(kind)
            self.requests.labels(route, method, str(status)).inc(slot.count)
            _observe(self.duration.labels(route, method), slot.seconds, slot.durations)
            if slot.bytes_in:
                self.received.labels(route).inc(slot.bytes_in)
            if slot.bytes_out:
                self.sent.labels(route).inc(slot.bytes_out)
            if repo is not None:
                self._flush_repository(kind, method, status, repo, slot)
            handler = DISTRIBUTION_HANDLER.get(kind)
            if handler is not None:
                self.reg_requests.labels(str(status), handler, method).inc(slot.count)
                _observe(self.reg_duration.labels(handler, method), slot.seconds, slot.durations)
                _observe(self.reg_in_size.labels(handler), slot.bytes_in, slot.in_sizes)
                _observe(self.reg_out_size.labels(handler), slot.bytes_out, slot.out_sizes)
        self._flush_proxy()
        self.jobs.flush()
        self.latency.flush()
        self.flight.set(sum(self.in_flight.values()))
        for handler, count in self.in_flight.items():
            if handler:
                self.reg_flight.labels(handler).set(count)

    def _flush_repository(
        self, kind: str, method: str, status: int, repo: str, slot: _Slot
    ) -> None:
        self.repo_requests.labels(repo, public_kind(kind)).inc(slot.count)
        if slot.bytes_in:
            self.repo_received.labels(repo).inc(slot.bytes_in)
        if slot.bytes_out:
            self.repo_sent.labels(repo).inc(slot.bytes_out)
        if kind == "upload" and method == "POST" and status in (201, 202):
            self.uploads_started.labels(repo).inc(slot.count)
            if status == 201:  # monolithic upload or mount: opened and completed at once
                self.uploads_finished.labels(repo, "completed").inc(slot.count)
        elif kind == "upload_chunk" and method == "PUT" and status == 201:
            self.uploads_finished.labels(repo, "completed").inc(slot.count)
        elif kind == "upload_chunk" and method == "DELETE" and status == 204:
            self.uploads_finished.labels(repo, "cancelled").inc(slot.count)

    def _flush_proxy(self) -> None:
        hits, misses, errors = proxy_events.take()
        for counts, family in ((hits, self.proxy_hits), (misses, self.proxy_misses)):
            for (name, what), n in counts.items():
                family.labels(self.repository_label(name), what).inc(n)
        for (name, kind), n in errors.items():
            self.proxy_errors.labels(self.repository_label(name), kind).inc(n)

    def sync_faults(self, refused: Mapping[str, int]) -> None:
        """Add the refusals `FaultReport` counted since the last call."""
        for reason, count in list(refused.items()):
            delta = count - self._faults_seen.get(reason, 0)
            if delta > 0:
                self.refused.labels(reason).inc(delta)
                self._faults_seen[reason] = count

    def sync_damaged(self, damaged_blobs: int) -> None:
        """Add the damaged-blob refusals `StorageFaults` counted since the last call."""
        delta = damaged_blobs - self._faults_seen.get("_damaged", 0)
        if delta > 0:
            self.damaged.inc(delta)
            self._faults_seen["_damaged"] = damaged_blobs

    def breakers(self, states: Mapping[str, tuple[bool, int]]) -> None:
        """Proxy repositories' breakers: name -> (blocked, consecutive failures)."""
        merged: dict[str, tuple[bool, int]] = {}
        for name, (blocked, failures) in states.items():
            label = self.repository_label(name)
            was_blocked, was_failures = merged.get(label, (False, 0))
            merged[label] = (blocked or was_blocked, max(failures, was_failures))
        for label, (blocked, failures) in merged.items():
            self.upstream_blocked.labels(label).set(1 if blocked else 0)
            self.upstream_failures.labels(label).set(failures)

    def health(self, check: str, ok: bool, seconds: float) -> None:
        self.check_up.labels(check).set(1 if ok else 0)
        self.check_seconds.labels(check).set(seconds)

    def render(self) -> bytes:
        """The text exposition of every worker's files (call `flush` first, on the loop)."""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        multiproc.mark_dead_workers(self.folder)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.folder))  # type: ignore[no-untyped-call]
        return generate_latest(registry)


def _observe(child: Any, total: float, counts: list[int]) -> None:
    """Add `counts` (per bucket, not cumulative) and their `total` to a histogram child."""
    child._sum.inc(total)
    for bucket, n in zip(child._buckets, counts, strict=True):
        if n:
            bucket.inc(n)
