"""What each job type does, and the report it leaves (JSON, stored with the run).

Every report has `dry_run`, `summary` (one line an operator reads), `counts`, and for the
jobs that delete, `items` (what went, or would go; at most ITEM_LIMIT of each kind are kept,
`truncated` says so) and `items_sha256`, a digest of the whole set: a dry run and the real
run on the same unchanged registry have the same digest (ADR 0025), which the report makes
visible without comparing lists.

A job asked to stop (`Stop`, set by the runner when it sees the request on the run's row)
ends between two units of work (a batch of GC deletes, one image of a cleanup, a repository
of the upload purge, HASH_BATCH blobs of fsck) and returns what it did so far, with
`"stopped": true` in its report; what it left stays for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from portway.config import JobConfig, Settings
from portway.db.store import MetadataStore
from portway.repos.base import Repository
from portway.storage.blobstore import BlobStore

Progress = Callable[[str, Mapping[str, int]], Awaitable[None]]
Report = dict[str, Any]
ITEM_LIMIT = 10000


@dataclass
class JobEnv:
    """What jobs work on: the stores, and the repositories in service (upload purge)."""

    settings: Settings
    meta: MetadataStore
    blobs: BlobStore
    repositories: Callable[[], Iterable[Repository]]
    purge_refresh_tokens: Callable[[], int] | None = None  # runs in a thread


class Stop:
    """Whether the run is to stop, and who asked. `checkpoint()` is what a job awaits between
    two units of work; it also holds the test knob's pause (runner.phase_delay), cut short
    by a stop."""

    def __init__(self, pause: float = 0.0) -> None:
        self.by: str | None = None
        self.pause = pause
        self._asked = asyncio.Event()

    @property
    def requested(self) -> bool:
        return self.by is not None

    def request(self, by: str) -> None:
        self.by = by
        self._asked.set()

    async def wait(self, seconds: float) -> None:
        """Sleep `seconds`, or less when a stop is asked for meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._asked.wait(), seconds)

    async def checkpoint(self) -> bool:
        if self.pause and not self.requested:
            await self.wait(self.pause)
        return self.requested


def set_digest(items: Iterable[tuple[str, ...]]) -> str:
    """sha256 over the sorted set: equal for equal sets, whatever their order."""
    h = hashlib.sha256()
    for item in sorted(set(items)):
        h.update(json.dumps(list(item)).encode() + b"\n")
    return "sha256:" + h.hexdigest()


def _capped(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    return rows[:ITEM_LIMIT], len(rows) > ITEM_LIMIT


async def run_gc(
    env: JobEnv, job: JobConfig, dry_run: bool, progress: Progress, stop: Stop
) -> Report:
    from portway.lifecycle.collector import Collector
    from portway.lifecycle.collector import Report as GcReport

    collector = Collector(env.meta, env.blobs, env.settings.server.gc_hold)
    started = time.monotonic()
    await progress("planning", {})
    plan = await collector.plan()
    todo = {
        "candidates": plan.candidates,
        "held": plan.held,
        "blob_links": len(plan.links),
        "blobs": len(plan.blobs) + len(plan.resume),
        "manifests": len(plan.manifests),
    }
    await progress("describing" if dry_run else "deleting", todo)
    if stop.requested:  # during the phase's pause (tests) or the plan: nothing done yet
        report = GcReport(dry_run, candidates=plan.candidates, held=plan.held, stopped=True)
    elif dry_run:
        report = await collector.describe(plan)
    else:

        async def checkpoint(done: Mapping[str, int]) -> bool:  # before every batch
            await progress("deleting", {**todo, **done})  # and the test knob's pause
            return stop.requested

        report = await collector.execute(plan, checkpoint)
    seconds = time.monotonic() - started
    manifests, cut_m = _capped(
        [{"repository": r, "image": i, "digest": d} for r, i, d in report.manifests]
    )
    links, cut_l = _capped([{"repository": r, "image": i, "digest": d} for r, i, d in report.links])
    blobs, cut_b = _capped([{"digest": d, "size": s} for d, s in report.blobs])
    verb = "would delete" if dry_run else "deleted"
    return {
        "dry_run": dry_run,
        "summary": f"gc: {verb} {len(report.manifests)} manifest(s), {len(report.links)} blob "
        f"link(s), {len(report.blobs)} blob(s), {report.bytes_freed} bytes"
        f"{' would be' if dry_run else ''} freed",
        "counts": {
            "manifests": len(report.manifests),
            "blob_links": len(report.links),
            "blobs": len(report.blobs),
            "candidates": report.candidates,
            "held": report.held,
        },
        "bytes_freed": report.bytes_freed,
        "items": {"manifests": manifests, "blob_links": links, "blobs": blobs},
        "items_sha256": set_digest(report.deleted()),
        "truncated": cut_m or cut_l or cut_b,
        "seconds": round(seconds, 3),
        "stopped": report.stopped,
    }


async def run_cleanup(
    env: JobEnv, job: JobConfig, dry_run: bool, progress: Progress, stop: Stop
) -> Report:
    from portway.lifecycle.cleanup import Cleanup
    from portway.lifecycle.guard import Guard

    guard = Guard(env.meta, env.settings.server.gc_hold)
    await progress("selecting" if dry_run else "removing", {})
    cleanup = Cleanup(env.settings, env.meta, guard)
    report = await cleanup.run(dry_run, job.policy or None, stop.checkpoint)
    tags, cut_t = _capped([{"repository": r, "image": i, "tag": t} for r, i, t in report.tags])
    manifests, cut_m = _capped(
        [{"repository": r, "image": i, "digest": d} for r, i, d in report.manifests]
    )
    verb = "would remove" if dry_run else "removed"
    return {
        "dry_run": dry_run,
        "summary": f"cleanup{' ' + job.policy if job.policy else ''}: {verb} "
        f"{len(report.tags)} tag(s) and {len(report.manifests)} manifest(s); the next gc "
        "frees their blobs",
        "counts": {"tags": len(report.tags), "manifests": len(report.manifests)},
        "items": {"tags": tags, "manifests": manifests},
        "items_sha256": set_digest(report.removed()),
        "truncated": cut_t or cut_m,
        "stopped": report.stopped,
    }


async def run_upload_purge(
    env: JobEnv, job: JobConfig, dry_run: bool, progress: Progress, stop: Stop
) -> Report:
    """Upload sessions idle past `upload_session_ttl`, writes a killed node never finished
    (S3 multipart uploads included), spool and lock files, expired refresh tokens."""
    from portway.repos.hosted import HostedRepository

    ttl = env.settings.server.upload_session_ttl
    hosted = [r for r in env.repositories() if isinstance(r, HostedRepository)]
    await progress("purging", {"repositories": len(hosted)})
    if dry_run:
        expired = await env.meta.expired_uploads(time.time() - ttl)
        return {
            "dry_run": True,
            "summary": f"upload purge: {len(expired)} upload session(s) idle for more than "
            f"{ttl} s would be purged",
            "counts": {"uploads": len(expired)},
        }
    counts = {"uploads": 0, "leftovers": await env.blobs.purge_leftovers(ttl), "refresh_tokens": 0}
    stopped = False
    for repo in hosted:
        if stopped := await stop.checkpoint():
            break
        counts["uploads"] += await repo.purge_uploads(ttl)
    if env.purge_refresh_tokens is not None and not stopped:
        counts["refresh_tokens"] = await asyncio.to_thread(env.purge_refresh_tokens)
    return {
        "dry_run": False,
        "summary": f"upload purge: {counts['uploads']} upload session(s), "
        f"{counts['leftovers']} unfinished write(s) or spool file(s), "
        f"{counts['refresh_tokens']} expired refresh token(s) removed",
        "counts": counts,
        "stopped": stopped,
    }


async def run_fsck(
    env: JobEnv, job: JobConfig, dry_run: bool, progress: Progress, stop: Stop
) -> Report:
    """Checks and reports; never repairs (that is `portway fsck --repair`)."""
    from portway.lifecycle.fsck import fsck

    await progress("checking", {"sample": job.sample})
    report = await fsck(
        env.meta, env.blobs, sample=job.sample or None, repair=False, checkpoint=stop.checkpoint
    )
    found = asdict(report)
    problems = {k: len(v) for k, v in found.items() if isinstance(v, list)}
    state = "clean" if report.clean else "PROBLEMS FOUND"
    return {
        "dry_run": dry_run,
        "summary": f"fsck: {state}; {report.checked} blob(s) hashed",
        "clean": report.clean,
        "counts": {"checked": report.checked, **problems},
        "items": {k: v for k, v in found.items() if isinstance(v, list) and v},
        "stopped": report.stopped,
    }


KINDS: dict[str, Callable[[JobEnv, JobConfig, bool, Progress, Stop], Awaitable[Report]]] = {
    "gc": run_gc,
    "cleanup": run_cleanup,
    "upload_purge": run_upload_purge,
    "fsck": run_fsck,
}
