"""Cron schedules in UTC: crontab's five fields (minute hour day-of-month month day-of-week),
or six with a leading second field as in Nexus's (Quartz) task schedules.

The syntax operators know from crontab(5): `*`, numbers, ranges `a-b`, steps `*/n` and
`a-b/n`, lists `a,b,c`, month and weekday names (`jan`, `mon`; case-insensitive), 0 or 7 for
Sunday, and the shorthands `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly`,
`@yearly` (`@annually`). As in Vixie cron, when both day-of-month and day-of-week are
restricted (neither starts with `*`), a day matches if either does; otherwise both must.
Quartz's `?` (no specific value) is read as `*` in the two day fields; a five-field schedule
fires at second 0.

Times are UTC on every node, so the nodes of a cluster agree on every fire time whatever
their local time zone. Written here rather than taken from a package: it is 200 lines, and
what it must compute (the next and the previous fire time) is all the scheduler needs.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m}
DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
SHORTHANDS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# (name, lowest, highest, names)
FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 7, DAYS),
)
SEARCH_YEARS = 5  # "30 2 31 2 *" (31 February) never fires: refused at parse time


class CronError(ValueError):
    """A schedule that does not parse, with what is wrong and where."""


@dataclass(frozen=True)
class Cron:
    text: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day of month is `*`
    any_weekday: bool  # day of week is `*`

    def _day_matches(self, when: datetime) -> bool:
        dom = when.day in self.days
        dow = (when.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:  # a field starting with `*` (even `*/2`)
            return dom and dow
        return dom or dow

    def matches(self, when: datetime) -> bool:
        return (
            when.second in self.seconds
            and when.minute in self.minutes
            and when.hour in self.hours
            and when.month in self.months
            and self._day_matches(when)
        )

    def next_after(self, when: datetime) -> datetime:
        """The first fire time strictly after `when` (an aware datetime; the answer in UTC)."""
        t = when.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
        limit = t + timedelta(days=366 * SEARCH_YEARS)
        while t < limit:
            if t.month not in self.months:
                t = _first_of_next_month(t)
            elif not self._day_matches(t):
                t = (t + timedelta(days=1)).replace(hour=0, minute=0, second=0)
            elif t.hour not in self.hours:
                t = (t + timedelta(hours=1)).replace(minute=0, second=0)
            elif t.minute not in self.minutes:
                t = t.replace(second=0) + timedelta(minutes=1)
            elif t.second not in self.seconds:
                later = [s for s in self.seconds if s > t.second]
                t = t.replace(second=min(later)) if later else _next_minute(t)
            else:
                return t
        raise CronError(f"{self.text!r} never fires")

    def previous_before(self, when: datetime) -> datetime:
        """The last fire time at or before `when`."""
        t = when.astimezone(UTC).replace(microsecond=0)
        limit = t - timedelta(days=366 * SEARCH_YEARS)
        second = timedelta(seconds=1)
        while t > limit:
            if t.month not in self.months:
                t = t.replace(day=1, hour=0, minute=0, second=0) - second
            elif not self._day_matches(t):
                t = t.replace(hour=0, minute=0, second=0) - second
            elif t.hour not in self.hours:
                t = t.replace(minute=0, second=0) - second
            elif t.minute not in self.minutes:
                t = t.replace(second=0) - second
            elif t.second not in self.seconds:
                earlier = [s for s in self.seconds if s < t.second]
                t = t.replace(second=max(earlier)) if earlier else t.replace(second=0) - second
            else:
                return t
        raise CronError(f"{self.text!r} never fires")


def _next_minute(t: datetime) -> datetime:
    return t.replace(second=0) + timedelta(minutes=1)


def _first_of_next_month(t: datetime) -> datetime:
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    return t.replace(year=year, month=month, day=1, hour=0, minute=0, second=0)


def _value(token: str, field: str, low: int, high: int, names: dict[str, int]) -> int:
    word = token.lower()
    if word in names:
        return names[word]
    if not token.isdigit():
        raise CronError(f"{field}: {token!r} is not a number" + (" or a name" if names else ""))
    number = int(token)
    if not low <= number <= high:
        raise CronError(f"{field}: {number} is outside {low}-{high}")
    return number


def _field(text: str, field: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{field}: empty list item in {text!r}")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{field}: step {step_text!r} must be a number above 0")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start = _value(first, field, low, high, names)
            end = _value(last, field, low, high, names)
            if end < start:
                raise CronError(f"{field}: range {base!r} runs backwards")
        else:
            start = _value(base, field, low, high, names)
            end = high if slash else start  # "5/15": from 5, every 15
        out.update(range(start, end + 1, step))
    return out


def parse(text: str) -> Cron:
    """A schedule from its text; raises CronError saying what is wrong."""
    spec = SHORTHANDS.get(text.strip().lower(), text)
    parts = spec.split()
    if len(parts) not in (5, 6):
        raise CronError(
            f"{text!r}: expected 5 fields (minute hour day-of-month month day-of-week), 6 with "
            f"a leading second field, or one of {', '.join(sorted(SHORTHANDS))}; "
            f"got {len(parts)} field(s)"
        )
    if len(parts) == 5:
        parts.insert(0, "0")  # crontab's fields fire at second 0
    for day in (3, 5):  # Quartz's "no specific value"
        parts[day] = "*" if parts[day] == "?" else parts[day]
    seconds, minutes, hours, days, months, weekdays = (
        _field(part, name, low, high, names)
        for part, (name, low, high, names) in zip(parts, FIELDS, strict=True)
    )
    cron = Cron(
        text=text,
        seconds=frozenset(seconds),
        minutes=frozenset(minutes),
        hours=frozenset(hours),
        days=frozenset(days),
        months=frozenset(months),
        weekdays=frozenset(0 if d == 7 else d for d in weekdays),
        any_day=parts[3].startswith("*"),
        any_weekday=parts[5].startswith("*"),
    )
    cron.next_after(datetime(2000, 1, 1, tzinfo=UTC))  # refuses one that never fires
    return cron
