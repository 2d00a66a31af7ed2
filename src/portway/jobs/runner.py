"""One job's turn under its lease: settle what an earlier holder left, run what is due.

`JobRunner.hold(job, lease)` is the job `run_singleton` runs: it claims the next due run
(records.claim), runs it with a heartbeat, and repeats until nothing is due; then the lease
is released. The heartbeat writes progress every HEARTBEAT seconds (at most a third of the
lease's lifetime), fenced by the lease: a write refused because the lease moved on stops the
run at once, and `run_singleton` cancels it too when a renewal fails.

A stop asked for through the API (stops.py) is seen by polling the run's row every
STOP_POLL seconds; the job then ends at its next unit of work (kinds.Stop) and the run is
recorded `cancelled` with what it did so far, and is not run again.

`PORTWAY_JOB_PHASE_DELAY` (seconds, for tests only; README "Maintenance jobs") pauses a run
at each phase change and between units of work, so a test can kill or stop the node holding
a run that is surely mid-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import traceback
from collections.abc import Mapping
from functools import partial
from typing import Any

from sqlalchemy import Engine

from portway.config import JobConfig, JobsConfig
from portway.coordination.interfaces import Lease, LeaseLost, Leases
from portway.jobs import records
from portway.jobs.cron import Cron
from portway.jobs.kinds import KINDS, JobEnv, Stop
from portway.jobs.stops import STOP_POLL, stop_asked
from portway.observe.job_metrics import job_events

log = logging.getLogger("portway.jobs")
HEARTBEAT = 5.0
DELAY_ENV = "PORTWAY_JOB_PHASE_DELAY"


def phase_delay() -> float:
    try:
        return max(0.0, float(os.environ.get(DELAY_ENV, "0")))
    except ValueError:
        return 0.0


class JobRunner:
    def __init__(self, env: JobEnv, engine: Engine, leases: Leases, config: JobsConfig) -> None:
        self.env = env
        self.engine = engine
        self.leases = leases
        self.config = config
        self.delay = phase_delay()

    async def hold(self, job: JobConfig, cron: Cron | None, lease: Lease) -> None:
        """Run every due run of `job` while holding `lease` (run_singleton's job)."""
        while True:
            run_id = await asyncio.to_thread(
                records.claim,
                self.engine,
                self.leases,
                lease,
                job.name,
                job.type,
                cron,
                job.dry_run,
            )
            if run_id is None:
                return
            await self.execute(job, lease, run_id)

    async def execute(self, job: JobConfig, lease: Lease, run_id: int) -> None:
        run = await asyncio.to_thread(records.get_run, self.engine, run_id)
        assert run is not None
        log.info(
            "job %s: run %d (%s%s) started on this node, lease token %d",
            job.name,
            run_id,
            run.trigger,
            ", dry run" if run.dry_run else "",
            lease.token,
        )
        state: dict[str, Any] = {"phase": "starting", "progress": {}}
        beat = partial(self._beat, lease, run_id, state)
        stop = Stop(self.delay)

        async def progress(phase: str, counts: Mapping[str, int]) -> None:
            state["phase"], state["progress"] = phase, dict(counts)
            try:
                await beat()
            except LeaseLost:
                raise
            except Exception:  # a database hiccup: the heartbeat writes it again soon
                log.warning("job %s: run %d: progress not recorded", job.name, run_id,
                            exc_info=True)  # fmt: skip
            if self.delay:
                await stop.wait(self.delay)

        started = time.monotonic()

        def ended(state: str, report: dict[str, Any] | None = None) -> None:  # for /metrics
            seconds = time.monotonic() - started
            job_events.finished(job.name, job.type, state, seconds, time.time(), report,
                                run.dry_run)  # fmt: skip

        body = asyncio.ensure_future(KINDS[job.type](self.env, job, run.dry_run, progress, stop))
        ticker = asyncio.ensure_future(self._heartbeats(beat, body))
        watcher = asyncio.ensure_future(self._watch_stop(job.name, run_id, stop))
        try:
            report = await body
        except asyncio.CancelledError:
            ended("cancelled")
            if stop.requested:  # and then this node stopped: stopped, not run again
                detail = f"stopped by {stop.by}; this node stopped before the job ended"
                await self._finish_quietly(lease, run_id, "cancelled", None, detail)
            else:
                await self._finish_quietly(
                    lease,
                    run_id,
                    "cancelled",
                    None,
                    "cancelled: this node stopped or lost the job's lease",
                    interrupted=True,
                )
            with contextlib.suppress(Exception):
                await self.leases.release(lease)
            raise
        except LeaseLost as exc:
            ended("interrupted")
            log.warning("job %s: run %d stopped: %s", job.name, run_id, exc)
            raise
        except Exception as exc:
            ended("failed")
            log.exception("job %s: run %d failed", job.name, run_id)
            detail = "".join(traceback.format_exception_only(exc)).strip()
            await self._finish_quietly(lease, run_id, "failed", None, detail)
            return
        finally:
            for helper in (ticker, watcher):
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await helper
        outcome = "done"
        if stop.requested and report.get("stopped"):
            outcome = "cancelled"
            report["stopped_by"] = stop.by
            report["summary"] = (
                f"stopped by {stop.by} before it finished; so far: {report.get('summary', '')}; "
                "the rest is left for the next run"
            )
        ended(outcome, report)  # what it deleted is gone, whether or not the record below is
        await asyncio.to_thread(
            records.finish,
            self.engine,
            self.leases,
            lease,
            run_id,
            outcome,
            report,
            None,
            self.config.keep_runs,
        )
        log.info("job %s: run %d %s: %s", job.name, run_id, outcome, report.get("summary", ""))

    async def _watch_stop(self, name: str, run_id: int, stop: Stop) -> None:
        """Look at the run's row until someone asks it to stop (from any node)."""
        while True:
            await asyncio.sleep(STOP_POLL)
            try:
                by = await asyncio.to_thread(stop_asked, self.engine, run_id)
            except Exception:  # a database hiccup: the next look tries again
                log.warning("job %s: could not look for a stop request", name, exc_info=True)
                continue
            if by is not None:
                log.info("job %s: run %d asked to stop by %s", name, run_id, by)
                stop.request(by)
                return

    async def _beat(self, lease: Lease, run_id: int, state: dict[str, Any]) -> None:
        await asyncio.to_thread(
            records.heartbeat,
            self.engine,
            self.leases,
            lease,
            run_id,
            state["phase"],
            state["progress"],
        )

    async def _heartbeats(self, beat: Any, body: asyncio.Future[Any]) -> None:
        interval = min(HEARTBEAT, self.config.lease_ttl / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await beat()
            except LeaseLost:
                body.cancel()  # no more writes on old authority
                return
            except Exception:  # a database hiccup: the next beat tries again
                log.warning("job heartbeat failed", exc_info=True)

    async def _finish_quietly(
        self,
        lease: Lease,
        run_id: int,
        state: str,
        report: dict[str, Any] | None,
        error: str,
        interrupted: bool = False,
    ) -> None:
        try:
            await asyncio.to_thread(
                records.finish,
                self.engine,
                self.leases,
                lease,
                run_id,
                state,
                report,
                error,
                self.config.keep_runs,
                interrupted,
            )
        except LeaseLost:
            log.warning("run %d: the lease moved on; the next holder records it", run_id)
        except Exception:
            log.exception("run %d: could not record its end", run_id)
