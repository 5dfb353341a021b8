"""When the daemon runs: every `interval` seconds, or on a 5-field crontab in UTC, each run
delayed by a random `jitter`.

Crontab is read as cron reads it. APScheduler 3 counts weekdays from Monday = 0, cron from
Sunday = 0 (and 7), so `0 3 * * 1` would run on Tuesdays if handed over as written: the
day-of-week field is translated to weekday names here. A day-of-month *and* a day-of-week
restriction mean "either" to cron and "both" to APScheduler, so that combination is refused
rather than run on the wrong days.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apscheduler.triggers.base import BaseTrigger

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_PART = re.compile(r"(?P<range>\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/(?P<step>[0-9]+))?")


@dataclass(frozen=True, slots=True)
class Schedule:
    interval: float = 300.0
    cron: str | None = None
    jitter: float = 15.0

    def describe(self) -> str:
        how = f"cron {self.cron!r} (UTC)" if self.cron else f"every {self.interval:g}s"
        return f"{how}, jitter up to {self.jitter:g}s"


def parse_cron(value: object) -> str:
    """A crontab expression (5 fields or an @macro), checked as APScheduler will use it.
    Returns it with whitespace normalized; a ValueError says what is wrong."""
    if not isinstance(value, str):
        raise ValueError("must be a crontab expression such as '*/10 * * * *'")
    text = " ".join(value.split())
    if not text:
        return ""
    if not text.isascii():  # int() reads Arabic-Indic and other Unicode digits; cron does not
        raise ValueError(f"{text!r}: a crontab has only ASCII digits, names and * , - /")
    _fields(text)
    return text


def _fields(text: str) -> dict[str, str]:
    expanded = MACROS.get(text.lower(), text)
    if expanded.startswith("@"):
        raise ValueError(f"{text!r}: unknown macro (known: {', '.join(sorted(MACROS))})")
    parts = expanded.split()
    if len(parts) != 5:
        raise ValueError(
            f"{text!r} has {len(parts)} field(s); a crontab has 5: minute hour day-of-month "
            "month day-of-week (e.g. '*/10 * * * *')"
        )
    minute, hour, day, month, dow = parts
    if day != "*" and dow != "*":
        raise ValueError(
            f"{text!r} restricts both day-of-month and day-of-week, which cron reads as either "
            "and the scheduler as both; restrict one of them"
        )
    fields = {
        "minute": minute,
        "hour": hour,
        "day": day,
        "month": month.lower(),
        "day_of_week": _weekdays(dow, text),
    }
    from apscheduler.triggers.cron import CronTrigger

    try:
        cron = CronTrigger(timezone=UTC, **fields)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{text!r}: {' '.join(str(exc).split())}") from None
    if cron.get_next_fire_time(None, datetime.now(UTC)) is None:  # e.g. '0 0 30 2 *'
        raise ValueError(f"{text!r} never fires (no such date)")
    return fields


def _weekdays(field: str, text: str) -> str:
    """cron's day-of-week field as APScheduler weekday names (0 and 7 are Sunday)."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.lower().split(","):
        match = _PART.fullmatch(part)
        if match is None:
            raise ValueError(f"{text!r}: day-of-week {part!r} is not a crontab value")
        step = int(match["step"] or 1)
        if step < 1:
            raise ValueError(f"{text!r}: day-of-week step must be at least 1")
        span = match["range"]
        if span == "*":
            first, last = 0, 6
        else:
            low, _, high = span.partition("-")
            first = _day(low, text)
            last = _day(high, text) if high else (6 if match["step"] else first)
            if last < first:
                raise ValueError(f"{text!r}: day-of-week range {span!r} runs backwards")
        days.update(d % 7 for d in range(first, last + 1, step))
    return ",".join(_DAYS[d] for d in sorted(days))


def _day(token: str, text: str) -> int:
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token)
    if token[:3] in _DAYS and len(token) == 3:
        return _DAYS.index(token)
    raise ValueError(f"{text!r}: {token!r} is not a day of the week (0-7 or sun-sat)")


def trigger(schedule: Schedule) -> BaseTrigger:
    """The APScheduler trigger for this schedule (jitter in whole seconds, as it takes it)."""
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    jitter = int(schedule.jitter) or None
    if schedule.cron:
        return CronTrigger(timezone=UTC, jitter=jitter, **_fields(schedule.cron))
    return IntervalTrigger(seconds=schedule.interval, jitter=jitter, timezone=UTC)
