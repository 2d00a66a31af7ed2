"""Cron schedules (portway/jobs/cron.py) and the `[[job]]` / `[jobs]` settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from portway.config import ConfigError, load_settings
from portway.config_jobs import DEFAULT_JOBS, effective_jobs
from portway.jobs.cron import CronError, parse


def at(text: str) -> datetime:
    """`2026-12-02 05:17` or `2026-12-02 05:17:30`, in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# (schedule, after, the next fire time). 2026-12-02 is a Wednesday.
NEXT = [
    ("* * * * *", "2026-12-02 05:17", "2026-12-02 05:18"),
    ("0 3 * * *", "2026-12-02 05:17", "2026-12-03 03:00"),
    ("0 3 * * *", "2026-12-02 02:59", "2026-12-02 03:00"),
    ("0 3 * * *", "2026-12-02 03:00", "2026-12-03 03:00"),  # strictly after
    ("0 * * * *", "2026-12-02 05:17", "2026-12-02 06:00"),
    ("*/15 * * * *", "2026-12-02 05:17", "2026-12-02 05:30"),
    ("5/20 * * * *", "2026-12-02 05:46", "2026-12-02 06:05"),
    ("10-20/5 * * * *", "2026-12-02 05:16", "2026-12-02 05:20"),
    ("0,30 8,20 * * *", "2026-12-02 08:31", "2026-12-02 20:00"),
    ("0 4 * * 0", "2026-12-02 05:17", "2026-12-06 04:00"),  # Sunday
    ("0 4 * * 7", "2026-12-02 05:17", "2026-12-06 04:00"),  # 7 is Sunday too
    ("0 4 * * sun", "2026-12-02 05:17", "2026-12-06 04:00"),
    ("*/15 9-17 * * MON-FRI", "2026-12-04 17:46", "2026-12-07 09:00"),  # Friday late
    ("0 0 1 * *", "2026-12-02 05:17", "2027-01-01 00:00"),  # across the year
    ("0 0 31 * *", "2027-01-31 00:00", "2027-03-31 00:00"),  # February has none
    ("0 0 29 feb *", "2026-12-02 05:17", "2028-02-29 00:00"),  # the next leap day
    ("0 12 1 jan-mar *", "2026-12-02 05:17", "2027-01-01 12:00"),
    # Both day fields restricted: either matches (Vixie cron).
    ("0 0 13 * fri", "2026-12-02 05:17", "2026-12-04 00:00"),  # a Friday before the 13th
    ("0 0 13 * fri", "2026-12-11 01:00", "2026-12-13 00:00"),  # the 13th (a Sunday)
    ("0 0 */10 * *", "2026-12-02 05:17", "2026-12-11 00:00"),  # days 1, 11, 21, 31
    ("@hourly", "2026-12-02 05:17", "2026-12-02 06:00"),
    ("@daily", "2026-12-02 05:17", "2026-12-03 00:00"),
    ("@midnight", "2026-12-02 05:17", "2026-12-03 00:00"),
    ("@weekly", "2026-12-02 05:17", "2026-12-06 00:00"),
    ("@monthly", "2026-12-02 05:17", "2027-01-01 00:00"),
    ("@yearly", "2026-12-02 05:17", "2027-01-01 00:00"),
    ("*/15 * * * *", "2026-12-02 05:17:42", "2026-12-02 05:30"),  # five fields: second 0
    # Six fields: a leading second field, as in Nexus's (Quartz) task schedules.
    ("*/10 * * * * *", "2026-12-02 05:17", "2026-12-02 05:17:10"),
    ("*/10 * * * * *", "2026-12-02 05:17:55", "2026-12-02 05:18"),
    ("*/10 * * * * *", "2026-12-02 23:59:50", "2026-12-03 00:00"),
    ("30 0 3 * * ?", "2026-12-02 05:17", "2026-12-03 03:00:30"),  # ? is any day
    ("0 0 3 ? * mon", "2026-12-02 05:17", "2026-12-07 03:00"),
    ("15,45 * * * * *", "2026-12-02 05:17:15", "2026-12-02 05:17:45"),  # strictly after
    ("0 * * * * *", "2026-12-02 05:17:30", "2026-12-02 05:18"),  # same as "* * * * *"
]


@pytest.mark.parametrize(("schedule", "after", "expected"), NEXT)
def test_next_fire_time(schedule: str, after: str, expected: str) -> None:
    cron = parse(schedule)
    fire = cron.next_after(at(after))
    assert fire == at(expected)
    assert cron.matches(fire) and not cron.matches(fire + timedelta(seconds=1))
    # The previous fire time at the answer (or within its second) is the answer itself.
    assert cron.previous_before(fire) == fire
    assert cron.previous_before(fire.replace(microsecond=500)) == fire
    assert cron.previous_before(fire - timedelta(seconds=1)) < fire


@pytest.mark.parametrize(
    ("schedule", "when", "expected"),
    [
        ("0 3 * * *", "2026-12-02 05:17", "2026-12-02 03:00"),
        ("0 3 * * *", "2026-12-02 02:17", "2026-12-01 03:00"),
        ("*/15 * * * *", "2026-12-02 05:17", "2026-12-02 05:15"),
        ("*/15 * * * *", "2026-12-02 05:17:42", "2026-12-02 05:15"),  # second 0
        ("*/10 * * * * *", "2026-12-02 05:17:42", "2026-12-02 05:17:40"),
        ("0 0 1 * *", "2026-12-02 05:17", "2026-12-01 00:00"),
        ("0 0 31 * *", "2027-03-01 00:00", "2027-01-31 00:00"),
        ("0 4 * * 0", "2026-12-02 05:17", "2026-11-29 04:00"),
    ],
)
def test_previous_fire_time(schedule: str, when: str, expected: str) -> None:
    assert parse(schedule).previous_before(at(when)) == at(expected)


def test_a_time_zone_is_read_as_the_same_instant_in_utc() -> None:
    from datetime import timedelta, timezone

    berlin = datetime(2026, 12, 2, 4, 30, tzinfo=timezone(timedelta(hours=1)))  # 03:30 UTC
    assert parse("0 4 * * *").next_after(berlin) == at("2026-12-02 04:00")


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("0 3 * *", "expected 5 fields"),
        ("0 0 3 * * * *", "expected 5 fields"),
        ("60 * * * * *", "second: 60 is outside 0-59"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("* 24 * * *", "hour: 24 is outside 0-23"),
        ("* * 0 * *", "day of month: 0 is outside 1-31"),
        ("* * * 13 *", "month: 13 is outside 1-12"),
        ("* * * * 8", "day of week: 8 is outside 0-7"),
        ("*/0 * * * *", "step '0' must be a number above 0"),
        ("5-1 * * * *", "runs backwards"),
        ("a * * * *", "minute: 'a' is not a number"),
        ("* * * foo *", "month: 'foo' is not a number or a name"),
        ("1,,2 * * * *", "empty list item"),
        ("0 0 30 feb *", "never fires"),
        ("@often", "expected 5 fields"),
    ],
)
def test_bad_schedules_say_what_is_wrong(schedule: str, message: str) -> None:
    with pytest.raises(CronError) as caught:
        parse(schedule)
    assert message in str(caught.value)


def _settings(tmp_path: Path, text: str) -> object:
    path = tmp_path / "portway.toml"
    path.write_text(text)
    return load_settings(path)


def test_default_jobs_free_disk_on_a_fresh_install(tmp_path: Path) -> None:
    settings = load_settings(None)
    jobs = {j.name: j for j in effective_jobs(settings.job)}
    assert set(jobs) == {"gc", "cleanup", "upload-purge", "fsck"}
    assert jobs["gc"].schedule == "0 3 * * *" and not jobs["gc"].dry_run
    assert jobs["upload-purge"].schedule == "0 * * * *"
    assert jobs["cleanup"].schedule == "0 2 * * *"  # before gc, which frees what it removed
    assert all(j.enabled for j in DEFAULT_JOBS)


def test_a_job_table_replaces_a_default_and_adds_its_own(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        """
[[cleanup_policy]]
name = "nightly"
keep_last = 3

[[job]]
name = "gc"
type = "gc"
schedule = "30 1 * * *"

[[job]]
name = "fsck"
type = "fsck"
enabled = false

[[job]]
name = "cleanup-nightly"
type = "cleanup"
policy = "nightly"
schedule = "@daily"
dry_run = true
""",
    )
    jobs = {j.name: j for j in effective_jobs(settings.job)}  # type: ignore[attr-defined]
    assert jobs["gc"].schedule == "30 1 * * *"
    assert not jobs["fsck"].enabled
    assert jobs["cleanup-nightly"].policy == "nightly" and jobs["cleanup-nightly"].dry_run
    assert list(jobs)[:4] == ["gc", "cleanup", "upload-purge", "fsck"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('name = "x"\ntype = "gc"\nschedule = "61 * * * *"', "minute: 61 is outside 0-59"),
        ('name = "x"\ntype = "vacuum"', "job"),
        ('name = "X Y"\ntype = "gc"', "job name"),
        ('name = "x"\ntype = "gc"\npolicy = "p"', "policy is for type"),
        ('name = "x"\ntype = "cleanup"\npolicy = "nope"', "unknown cleanup policy 'nope'"),
        ('name = "x"\ntype = "gc"\nevery = "day"', "every"),
    ],
)
def test_bad_job_tables_are_refused_naming_the_key(
    tmp_path: Path, table: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, f"[[job]]\n{table}\n")
    assert message in str(caught.value)


def test_two_jobs_of_one_name_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(
            tmp_path, '[[job]]\nname = "a"\ntype = "gc"\n[[job]]\nname = "a"\ntype = "fsck"\n'
        )
    assert "job names must be unique" in str(caught.value)
