"""Cron schedules: the tick arithmetic and what a tick does. No SQL (the store's) and no
timers (maintenance's): ``fire_due`` runs inside one writer transaction on the primary.

- Expressions are croniter's (5 fields, or 6 with seconds last), read in an IANA time zone
  (``zoneinfo``), so "30 2 * * *" in Europe/Paris is 02:30 local, and a tick that a DST jump
  skips runs at the first valid time after it (croniter's rule).
- A tick enqueues one job from the schedule's template, keyed ``schedule/<name>/<tick µs>``:
  enqueued exactly once per tick across a cluster and a failover — the job and the move of
  ``next_run_at`` commit together, and a new primary that runs the same tick again (its
  database lost the last transactions, or not) meets the key and stores nothing.
- A tick more than ``MISSED_AFTER_SECONDS`` late was missed (no primary could run it):
  ``MISSED_TICKS_SKIP`` runs none of them, ``RUN_ONCE`` one job keyed by the latest. Ticks
  within that window run, each (at most ``MAX_TICKS_PER_RUN`` a run).
- ``OVERLAP_POLICY_SKIP``: a tick whose schedule's last job is still PENDING or RUNNING
  enqueues nothing.
"""

from __future__ import annotations

import datetime
import zoneinfo
from dataclasses import replace
from typing import NamedTuple

from croniter import CroniterBadCronError, croniter

from .clock import MICROS
from .errors import InvalidArgument
from .models import EnqueueResult, JobState
from .store import Store

#: A tick later than this was missed (the node was down, no primary, a failover).
MISSED_AFTER_SECONDS = 60.0
#: Most ticks of one schedule run in one pass (a catch-up after a stall of a per-second cron).
MAX_TICKS_PER_RUN = 100


class Fired(NamedTuple):
    """What ``fire_due`` did: the jobs it enqueued (duplicates included, as the store
    answered), and the earliest next tick of any schedule (None: none)."""

    enqueued: list[EnqueueResult]
    next_at: int | None


def check(cron: str, time_zone: str) -> None:
    """Raise InvalidArgument naming ``schedule.cron`` / ``schedule.time_zone`` unless both parse."""
    _zone(time_zone)
    if not cron.strip() or len(cron) > 256:
        raise InvalidArgument("schedule.cron", "must be a cron expression of at most 256 characters")
    try:
        ok = croniter.is_valid(cron)
    except (CroniterBadCronError, ValueError, KeyError):
        ok = False
    if not ok or len(cron.split()) not in (5, 6):
        raise InvalidArgument("schedule.cron", f"is not a cron expression (5 or 6 fields): {cron!r}")


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument("schedule.time_zone", f"is not an IANA time zone: {name!r}") from None


def next_after(cron: str, time_zone: str, after_us: int) -> int:
    """The first tick strictly after ``after_us`` (µs since the epoch)."""
    start = datetime.datetime.fromtimestamp(after_us / MICROS, _zone(time_zone))
    nxt = croniter(cron, start).get_next(datetime.datetime)
    return round(nxt.timestamp() * MICROS)


def last_at_or_before(cron: str, time_zone: str, at_us: int) -> int:
    """The last tick at or before ``at_us``."""
    start = datetime.datetime.fromtimestamp((at_us + 1) / MICROS, _zone(time_zone))
    prev = croniter(cron, start).get_prev(datetime.datetime)
    return round(prev.timestamp() * MICROS)


def tick_key(name: str, tick_us: int) -> str:
    return f"schedule/{name}/{tick_us}"


def fire_due(store: Store, now: int, new_ids: object) -> Fired:
    """Run every due tick of every due schedule (inside the caller's transaction)."""
    enqueued: list[EnqueueResult] = []
    grace = int(MISSED_AFTER_SECONDS * MICROS)
    for sch in store.due_schedules(now):
        assert sch.next_run_at is not None
        tick = sch.next_run_at
        run: list[int] = []
        if now - tick > grace:  # missed ticks: jump over them at once, however many
            latest_missed = last_at_or_before(sch.cron, sch.time_zone, now - grace)
            if sch.missed_run_once:
                run.append(latest_missed)
            tick = next_after(sch.cron, sch.time_zone, latest_missed)
        while tick <= now and len(run) < MAX_TICKS_PER_RUN:
            run.append(tick)
            tick = next_after(sch.cron, sch.time_zone, tick)
        if len(run) == MAX_TICKS_PER_RUN and tick <= now:  # the rest of a long catch-up: skipped
            tick = next_after(sch.cron, sch.time_zone, now)
        last_run, last_job = None, None
        for t in run:
            if sch.overlap_skip and _still_active(store, last_job or sch.last_job_id):
                continue
            spec = replace(sch.template, idempotency_key=tick_key(sch.name, t))
            (result,) = store.enqueue([spec], now, new_ids)  # type: ignore[arg-type]
            enqueued.append(result)
            last_run, last_job = t, result.job_id
        store.schedule_ran(sch.name, tick, last_run, last_job)
    return Fired(enqueued, store.next_schedule_time())


def _still_active(store: Store, job_id: str | None) -> bool:
    if job_id is None:
        return False
    job = store.get_job(job_id)
    return job is not None and job.state in (JobState.PENDING, JobState.RUNNING)
