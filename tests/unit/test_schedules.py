"""Cron schedules on a real store with a fixed clock: tick arithmetic in time zones (DST
included), one job per tick keyed by the tick (a re-run after a failover stores nothing
twice), missed ticks skipped or run once, overlap skip, pause, and bad expressions named."""

from __future__ import annotations

import datetime
import zoneinfo

import pytest
from support.factories import new_ids, write

from edgeq_server import schedules
from edgeq_server.errors import InvalidArgument
from edgeq_server.models import JobSpec, JobState, ScheduleRow
from edgeq_server.store import Store

UTC = datetime.UTC
MIN = 60_000_000


def us(dt: datetime.datetime) -> int:
    return int(dt.timestamp() * 1_000_000)


T0 = us(datetime.datetime(2026, 12, 6, 12, 0, tzinfo=UTC))


def every_minute(store: Store, name: str = "tick", **kw: object) -> ScheduleRow:
    sch = ScheduleRow(
        name, "cronq", "* * * * *", "UTC", JobSpec("cronq", b"{}", None, 3), bool(kw.get("overlap_skip", False)),
        bool(kw.get("missed_run_once", False)), False, schedules.next_after("* * * * *", "UTC", T0),
    )
    return write(store, lambda: store.upsert_schedule(sch, T0))


def fire(store: Store, now: int) -> schedules.Fired:
    return write(store, lambda: schedules.fire_due(store, now, new_ids()))


def test_ticks_follow_the_time_zone_and_dst() -> None:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    before_jump = us(datetime.datetime(2026, 3, 29, 0, 30, tzinfo=paris))
    # 02:30 does not exist on 29 March 2026 in Paris (clocks jump 02:00 -> 03:00).
    first = schedules.next_after("30 2 * * *", "Europe/Paris", before_jump)
    assert datetime.datetime.fromtimestamp(first / 1e6, paris).hour == 3
    second = schedules.next_after("30 2 * * *", "Europe/Paris", first)
    assert datetime.datetime.fromtimestamp(second / 1e6, paris) == datetime.datetime(2026, 3, 30, 2, 30, tzinfo=paris)
    assert schedules.next_after("0 9 * * 1", "UTC", T0) == us(datetime.datetime(2026, 12, 7, 9, 0, tzinfo=UTC))
    assert schedules.last_at_or_before("* * * * *", "UTC", T0) == T0
    assert schedules.next_after("* * * * * */10", "UTC", T0) == T0 + 10_000_000  # 6 fields: seconds last


@pytest.mark.parametrize(
    "cron, tz, field",
    [("61 * * * *", "UTC", "schedule.cron"), ("every day", "UTC", "schedule.cron"), ("", "UTC", "schedule.cron"),
     ("* * * *", "UTC", "schedule.cron"), ("* * * * *", "Mars/Olympus", "schedule.time_zone")],
)
def test_bad_expressions_and_zones_are_named(cron: str, tz: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        schedules.check(cron, tz)
    assert err.value.field == field


def test_one_job_per_tick_keyed_by_the_tick_and_a_rerun_stores_nothing_twice(store: Store) -> None:
    every_minute(store)
    assert fire(store, T0 + 30_000_000).enqueued == []  # not due yet
    first = fire(store, T0 + MIN + 1)
    (job,) = first.enqueued
    assert not job.duplicate and first.next_at == T0 + 2 * MIN
    stored = store.get_job(job.job_id)
    assert stored is not None and stored.idempotency_key == f"schedule/tick/{T0 + MIN}" and stored.queue == "cronq"
    # A new primary whose database lost the move of next_run_at runs the same tick again.
    store.conn.execute("UPDATE schedules SET next_run_at = ? WHERE name = 'tick'", (T0 + MIN,))
    again = fire(store, T0 + MIN + 5)
    assert [(r.job_id, r.duplicate) for r in again.enqueued] == [(job.job_id, True)]
    assert store.conn.execute("SELECT count(*) FROM jobs").get == 1
    # 80 s late the 2-minute tick was missed (skipped); the 3-minute one, 20 s late, runs.
    late = fire(store, T0 + 3 * MIN + 20_000_000)
    assert len(late.enqueued) == 1 and late.next_at == T0 + 4 * MIN
    row = store.get_schedule("tick")
    assert row is not None and row.last_run_at == T0 + 3 * MIN and row.last_job_id == late.enqueued[-1].job_id


@pytest.mark.parametrize("run_once", [False, True])
def test_missed_ticks_are_skipped_or_run_once(store: Store, run_once: bool) -> None:
    every_minute(store, missed_run_once=run_once)
    down_until = T0 + 90 * MIN + 10_000_000  # no primary for an hour and a half
    fired = fire(store, down_until)
    keys = [store.get_job(r.job_id).idempotency_key for r in fired.enqueued]  # type: ignore[union-attr]
    # Ticks more than a minute late were missed; the one at 90 min (10 s late) runs.
    missed_one = [f"schedule/tick/{T0 + 89 * MIN}"] if run_once else []
    assert keys == [*missed_one, f"schedule/tick/{T0 + 90 * MIN}"]
    assert fired.next_at == T0 + 91 * MIN


def test_ticks_less_than_a_minute_late_each_run(store: Store) -> None:
    sch = ScheduleRow("fast", "cronq", "* * * * * */10", "UTC", JobSpec("cronq", b"", None, 3), False, False, False,
                      T0 + 10_000_000)
    write(store, lambda: store.upsert_schedule(sch, T0))
    fired = fire(store, T0 + 45_000_000)  # a 45 s stall: ticks at 10, 20, 30, 40 s
    assert [store.get_job(r.job_id).idempotency_key for r in fired.enqueued] == [  # type: ignore[union-attr]
        f"schedule/fast/{T0 + s * 1_000_000}" for s in (10, 20, 30, 40)
    ]
    assert fired.next_at == T0 + 50_000_000


def test_overlap_skip_waits_for_the_previous_job_and_pause_stops_ticks(store: Store) -> None:
    every_minute(store, overlap_skip=True)
    (first,) = fire(store, T0 + MIN).enqueued
    assert fire(store, T0 + 2 * MIN).enqueued == []  # the first is still pending: skipped
    write(store, lambda: store.cancel(first.job_id, T0 + 2 * MIN))
    (second,) = fire(store, T0 + 3 * MIN).enqueued
    assert second.job_id != first.job_id and store.get_job(second.job_id).state is JobState.PENDING  # type: ignore[union-attr]
    paused = write(store, lambda: store.pause_schedule("tick", True, None, T0 + 3 * MIN))
    assert paused.paused and paused.next_run_at is None
    assert fire(store, T0 + 10 * MIN).enqueued == [] and store.next_schedule_time() is None
    resumed = write(store, lambda: store.pause_schedule("tick", False, T0 + 11 * MIN, T0 + 10 * MIN))
    assert not resumed.paused and store.next_schedule_time() == T0 + 11 * MIN
    assert write(store, lambda: store.delete_schedule("tick"))
    assert not write(store, lambda: store.delete_schedule("tick"))  # a retried delete
