"""Settings for maintenance jobs: the `[jobs]` table and `[[job]]` tables (README
"Maintenance jobs"). Without any `[[job]]` the four default jobs apply; a `[[job]]` with a
default job's name replaces it."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from portway.config_base import Strict as _Strict

JobType = Literal["gc", "cleanup", "upload_purge", "fsck"]
JOB_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class JobConfig(_Strict):
    """`[[job]]`: one named maintenance job (Nexus calls them tasks)."""

    name: str
    type: JobType
    schedule: str = ""  # cron (5 fields, or 6: seconds first), UTC; "" runs only when asked
    enabled: bool = True  # false: never scheduled and refused by run now
    dry_run: bool = False  # a scheduled run only reports what it would delete
    policy: str = ""  # cleanup: one [[cleanup_policy]] name; "" applies every policy
    sample: int = Field(default=1000, ge=0)  # fsck: blobs hashed per run; 0 hashes every one

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not JOB_NAME_RE.match(value):
            raise ValueError(f"job name {value!r}: lower-case letters, digits, . _ - (max 64)")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        if value.strip():
            from portway.jobs.cron import parse

            parse(value)  # CronError is a ValueError: reported with the key
        return value.strip()

    @model_validator(mode="after")
    def _policy_only_for_cleanup(self) -> JobConfig:
        if self.policy and self.type != "cleanup":
            raise ValueError(f'job {self.name!r}: policy is for type = "cleanup" only')
        return self


class JobsConfig(_Strict):
    """`[jobs]`: how the scheduler of `portway serve` runs them."""

    enabled: bool = True  # false: this node never runs jobs (scheduled or queued)
    lease_ttl: float = Field(default=30, ge=2, le=3600, description="seconds")
    poll_interval: float = Field(default=5, ge=0.2, le=60, description="seconds")
    keep_runs: int = Field(default=200, ge=1, le=100000)  # run records kept per job


DEFAULT_JOBS: tuple[JobConfig, ...] = (
    JobConfig(name="gc", type="gc", schedule="0 3 * * *"),
    JobConfig(name="cleanup", type="cleanup", schedule="0 2 * * *"),
    JobConfig(name="upload-purge", type="upload_purge", schedule="0 * * * *"),
    JobConfig(name="fsck", type="fsck", schedule="0 4 * * 0", sample=1000),
)


def effective_jobs(declared: tuple[JobConfig, ...]) -> tuple[JobConfig, ...]:
    """The defaults, each replaced by a declared job of its name, then the other declared."""
    by_name = {j.name: j for j in declared}
    out = [by_name.pop(d.name, d) for d in DEFAULT_JOBS]
    return (*out, *by_name.values())
