"""What maintenance jobs did (ADR 0027), for /metrics.

A run happens on whichever node and worker holds the job's lease, so each worker counts the
runs it finished (`job_events.finished`, called by the job runner: plain numbers, no I/O) and
its `Recorder` moves them into the multiprocess files at its next flush; a node's /metrics
shows what that node ran, and Prometheus sums the nodes (`sum by (job)`).

Counted: every finished run by job and state, its duration, the time of the job's last
success, and the results of real runs (a dry run deletes nothing, so it adds no results):
what gc deleted and freed, what cleanup removed, what the upload purge removed, and what
fsck checked and found.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Any

RUN_BUCKETS = (
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, math.inf,
)  # fmt: skip
FSCK_PROBLEMS = ("corrupt", "missing", "unlinked", "missing_children", "orphans")
PURGED = ("uploads", "leftovers", "refresh_tokens")

# Counter families of real runs' results: name -> (help, job type, how to read the report)
RESULTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "portway_gc_deleted_blobs": ("Blobs deleted by gc runs", "gc", ("counts", "blobs")),
    "portway_gc_deleted_manifests": (
        "Unreferenced manifests deleted by gc runs", "gc", ("counts", "manifests"),
    ),
    "portway_gc_deleted_blob_links": (
        "Blob links of repositories deleted by gc runs", "gc", ("counts", "blob_links"),
    ),
    "portway_gc_freed_bytes": ("Bytes of blobs deleted by gc runs", "gc", ("bytes_freed",)),
    "portway_cleanup_removed_tags": (
        "Tags removed by cleanup runs", "cleanup", ("counts", "tags"),
    ),
    "portway_cleanup_removed_manifests": (
        "Untagged manifests removed by cleanup runs", "cleanup", ("counts", "manifests"),
    ),
    "portway_fsck_checked_blobs": (
        "Blobs whose bytes fsck runs hashed", "fsck", ("counts", "checked"),
    ),
}  # fmt: skip


def _number(report: Mapping[str, Any], path: tuple[str, ...]) -> int:
    value: Any = report
    for step in path:
        value = value.get(step) if isinstance(value, Mapping) else None
    return int(value) if isinstance(value, int | float) else 0


class JobEvents:
    """Runs this process finished since the last flush, in plain numbers."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], int] = {}  # (job, state) -> runs
        self.seconds: dict[str, tuple[float, list[int]]] = {}  # job -> (sum, per bucket)
        self.last_success: dict[str, float] = {}  # job -> wall-clock time
        self.results: dict[tuple[str, str], int] = {}  # (family, job) -> amount
        self.purged: dict[tuple[str, str], int] = {}  # (job, what) -> amount
        self.problems: dict[tuple[str, str], int] = {}  # (job, kind) -> found by the last run

    def finished(
        self,
        job: str,
        job_type: str,
        state: str,
        seconds: float,
        ended: float,
        report: Mapping[str, Any] | None = None,
        dry_run: bool = False,
    ) -> None:
        """One run ended: `state` is done, failed, cancelled or interrupted (lease lost)."""
        self.runs[(job, state)] = self.runs.get((job, state), 0) + 1
        total, counts = self.seconds.get(job) or (0.0, [0] * len(RUN_BUCKETS))
        counts[bisect.bisect_left(RUN_BUCKETS, seconds)] += 1
        self.seconds[job] = (total + seconds, counts)
        if state not in ("done", "cancelled") or report is None:
            return  # cancelled with a report: stopped through the API, what it did counts
        if state == "done":
            self.last_success[job] = max(ended, self.last_success.get(job, 0.0))
            if job_type == "fsck":  # a check: its findings count whether or not it was "dry"
                for kind in FSCK_PROBLEMS:
                    self.problems[(job, kind)] = _number(report, ("counts", kind))
        if dry_run and job_type != "fsck":
            return
        for family, (_, kind, path) in RESULTS.items():
            if kind == job_type and (amount := _number(report, path)):
                self.results[(family, job)] = self.results.get((family, job), 0) + amount
        if job_type == "upload_purge":
            for what in PURGED:
                if amount := _number(report, ("counts", what)):
                    self.purged[(job, what)] = self.purged.get((job, what), 0) + amount

    def take(self) -> JobEvents:
        taken = JobEvents()
        taken.__dict__, self.__dict__ = self.__dict__, taken.__dict__
        return taken


job_events = JobEvents()  # this process's; counted whether or not metrics are on


class JobFamilies:
    """The job families of one worker's `Recorder` (prometheus-client multiprocess files)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.runs = Counter(
            "portway_job_runs",
            "Maintenance job runs this node finished, by job and state (done, failed, "
            "cancelled, interrupted); dry runs included",
            ["job", "state"],
            registry=None,
        )
        self.duration = Histogram(
            "portway_job_run_duration_seconds",
            "How long the maintenance job runs this node finished took",
            ["job"],
            buckets=RUN_BUCKETS,
            registry=None,
        )
        self.last_success = Gauge(
            "portway_job_last_success_timestamp_seconds",
            "When a run of the job last ended done on this node (Unix time)",
            ["job"],
            registry=None,
            multiprocess_mode="max",
        )
        self.results = {
            name: Counter(name, text, ["job"], registry=None)
            for name, (text, _, _) in RESULTS.items()
        }
        self.purged = Counter(
            "portway_upload_purge_removed",
            "What upload purge runs removed: uploads (idle sessions), leftovers (unfinished "
            "writes, spool files), refresh_tokens (expired)",
            ["job", "what"],
            registry=None,
        )
        self.problems = Gauge(
            "portway_fsck_problems",
            "Problems the last fsck run on this node found, by kind",
            ["job", "kind"],
            registry=None,
            multiprocess_mode="mostrecent",
        )

    def flush(self) -> None:
        from portway.observe.metrics import _observe

        done = job_events.take()
        for (job, state), n in done.runs.items():
            self.runs.labels(job, state).inc(n)
        for job, (total, counts) in done.seconds.items():
            _observe(self.duration.labels(job), total, counts)
        for job, when in done.last_success.items():
            self.last_success.labels(job).set(when)
        for (family, job), amount in done.results.items():
            self.results[family].labels(job).inc(amount)
        for (job, what), amount in done.purged.items():
            self.purged.labels(job, what).inc(amount)
        for (job, kind), found in done.problems.items():
            self.problems.labels(job, kind).set(found)
