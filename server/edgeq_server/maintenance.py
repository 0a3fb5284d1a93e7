"""Background work on timers, never polling: delayed jobs coming due, lease expiry, cron
schedule ticks (``schedules.fire_due``), and the retention sweep.

``run_once(now)`` does everything that is due at ``now`` and is what tests call with a
fixed clock. ``run()`` is the thin loop around it: it sleeps until the earliest of the
next delayed job, the next lease expiry and the next retention sweep, or until something
earlier is noted (``note_due`` / ``note_lease``) or a manual clock moves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from . import logs, metrics, schedules
from .clock import MICROS, Clock
from .dispatch import Dispatcher
from .ids import uuid7
from .models import JobState
from .readers import Readers
from .store import Expired, Store
from .supervise import Supervisor
from .writer import Writer

log = logging.getLogger(__name__)

EXPIRE_BATCH = 500
RETENTION_BATCH = 500
#: At most this many retention batches per sweep, so a backlog never makes a long transaction run.
RETENTION_BATCHES_PER_SWEEP = 20


@dataclass(frozen=True, slots=True)
class Retention:
    """How long final jobs are kept, in microseconds; 0 keeps them forever."""

    completed_us: int = 24 * 3600 * MICROS
    failed_us: int = 7 * 24 * 3600 * MICROS
    cancelled_us: int = 24 * 3600 * MICROS
    interval_us: int = 60 * MICROS


@dataclass
class RunStats:
    due_queues: int = 0
    expired: int = 0
    deleted: int = 0
    scheduled: int = 0  # jobs enqueued by schedule ticks (duplicates excluded)


class Maintenance:
    def __init__(
        self,
        writer: Writer,
        readers: Readers,
        dispatcher: Dispatcher,
        clock: Clock,
        retention: Retention,
        *,
        is_primary: Callable[[], bool] = lambda: True,
    ) -> None:
        self._writer = writer
        self._readers = readers
        self._dispatcher = dispatcher
        self._clock = clock
        self._retention = retention
        self._is_primary = is_primary  # replicas leave writes (expiry, retention) to the primary
        self._acting = is_primary()  # whether the last run acted as primary
        self._due: dict[str, int] = {}
        self._next_expiry: int | None = None
        self._next_schedule: int | None = None
        self._next_retention = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        self._on_clock = lambda: self._wake_threadsafe(loop)
        clock.subscribe(self._on_clock)

    def _wake_threadsafe(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_soon_threadsafe(self._wake.set)

    # ------------------------------------------------------------------ notes

    def note_due(self, queue: str, run_at: int) -> None:
        """A job on ``queue`` becomes due at ``run_at``."""
        if run_at <= self._clock.now():
            self._dispatcher.notify((queue,))
            return
        current = self._due.get(queue)
        if current is None or run_at < current:
            self._due[queue] = run_at
            self._wake.set()

    def note_schedule(self, at: int | None) -> None:
        """A schedule's next tick is at ``at`` (None: nothing to note)."""
        if at is not None and (self._next_schedule is None or at < self._next_schedule):
            self._next_schedule = at
            self._wake.set()

    def note_lease(self, expires_at: int) -> None:
        """A lease was granted or extended to ``expires_at``."""
        if self._next_expiry is None or expires_at < self._next_expiry:
            self._next_expiry = expires_at
            self._wake.set()

    # ------------------------------------------------------------------ work

    async def load(self) -> None:
        """Read the timers' starting points from the database (startup)."""
        now = self._clock.now()
        for queue, at in await self._readers.run(lambda s: s.future_due_times(now)):
            self.note_due(queue, at)
        expiry = await self._readers.run(lambda s: s.next_lease_expiry())
        if expiry is not None:
            self.note_lease(expiry)
        self.note_schedule(await self._readers.run(Store.next_schedule_time))

    async def run_once(self, now: int) -> RunStats:
        stats = RunStats()
        if not self._is_primary():
            self._acting = False
            return stats
        if not self._acting:
            # Promoted: the timers loaded at startup are stale; the old primary added delayed
            # jobs and leases since. Read them again from the (replicated) database.
            log.info("this node is primary now: reloading timers (due jobs, lease expiry)")
            await self.load()
            self._acting = True
        await self._promote_due(now, stats)
        if self._next_expiry is not None and self._next_expiry <= now:
            await self._expire(now, stats)
        if self._next_schedule is not None and self._next_schedule <= now:
            await self._fire_schedules(now, stats)
        if now >= self._next_retention:
            await self._sweep(now, stats)
        return stats

    async def _promote_due(self, now: int, stats: RunStats) -> None:
        due = [q for q, at in self._due.items() if at <= now]
        if not due:
            return
        for q in due:
            del self._due[q]
        self._dispatcher.notify(due)
        stats.due_queues = len(due)
        for i, q in enumerate(due):
            try:
                nxt = await self._readers.run(lambda s, q=q: s.next_due_after(q, now))  # type: ignore[misc]
            except BaseException:
                # Keep the timer for queues not yet looked at: retried on the next run.
                for rest in due[i:]:
                    self._due.setdefault(rest, now)
                raise
            if nxt is not None:
                self.note_due(q, nxt)

    async def _expire(self, now: int, stats: RunStats) -> None:
        self._next_expiry = None
        try:
            await self._expire_all(now, stats)
        except BaseException:
            self.note_lease(now)  # the sweep failed: keep the timer, retry on the next run
            raise

    async def _expire_all(self, now: int, stats: RunStats) -> None:
        while True:
            expired: list[Expired]
            expired, _ = await self._writer.submit(lambda s, _now: s.expire_leases(now, EXPIRE_BATCH))
            self._dispatcher.settled(e.job_id for e in expired)
            self._dispatcher.notify({e.queue for e in expired if e.state is JobState.PENDING})
            for e in expired:  # a worker died or stalled past its lease: worth a line each
                log.info(
                    "lease expired: job %s", "failed for good" if e.state is JobState.FAILED else "will run again",
                    extra=logs.job_fields(e.job_id, e.queue),
                )
            stats.expired += len(expired)
            metrics.EXPIRED.inc(len(expired))
            if expired:
                log.info("expired %d leases", len(expired))
            if len(expired) < EXPIRE_BATCH:
                break
        nxt = await self._readers.run(Store.next_lease_expiry)
        if nxt is not None:
            self.note_lease(nxt)

    async def _fire_schedules(self, now: int, stats: RunStats) -> None:
        self._next_schedule = None
        ids = (uuid7() for _ in iter(int, 1))
        try:
            fired: schedules.Fired
            fired, _ = await self._writer.submit(lambda s, _now: schedules.fire_due(s, now, ids))
        except BaseException:
            self.note_schedule(now + MICROS)  # keep the timer: retried in a second
            raise
        new = [r for r in fired.enqueued if not r.duplicate]
        for queue in {r.queue for r in new}:
            self.note_due(queue, now)
            metrics.ENQUEUED.labels(metrics.queue_label(queue)).inc(sum(1 for r in new if r.queue == queue))
        stats.scheduled += len(new)
        if new:
            log.info("schedules enqueued %d job(s)", len(new))
        self.note_schedule(fired.next_at)

    async def _sweep(self, now: int, stats: RunStats) -> None:
        r = self._retention
        backlog = False
        for state, keep in (
            (JobState.COMPLETED, r.completed_us),
            (JobState.FAILED, r.failed_us),
            (JobState.CANCELLED, r.cancelled_us),
        ):
            if keep <= 0:
                continue
            for _ in range(RETENTION_BATCHES_PER_SWEEP):
                n, _ = await self._writer.submit(
                    lambda s, _now, st=state, k=keep: s.delete_finished(st, now - k, RETENTION_BATCH)  # type: ignore[misc]
                )
                stats.deleted += n
                metrics.DELETED.inc(n)
                if n < RETENTION_BATCH:
                    break
            else:
                backlog = True
        if stats.deleted:  # aliases of deleted jobs (rare: edge-accepted key twins)
            await self._writer.submit(lambda s, _now: s.delete_orphan_aliases(RETENTION_BATCH))
        # Refilled per-key rate buckets and idle fair groups with the default weight read the
        # same as none: forget them (one transaction).
        await self._writer.submit(
            lambda s, now_: s.prune_rate_keys(now_, RETENTION_BATCH) + s.prune_groups(RETENTION_BATCH)
        )
        # With a backlog, come back soon (small transactions, the writer stays responsive).
        self._next_retention = now + (MICROS // 10 if backlog else r.interval_us)

    # ------------------------------------------------------------------ loop

    def start(self, supervisor: Supervisor) -> None:
        self._task = supervisor.loop("maintenance", self._run)

    def wake(self) -> None:
        """Look again now (e.g. this node just became primary: reload the timers)."""
        self._wake.set()

    async def stop(self) -> None:
        self._clock.unsubscribe(self._on_clock)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def _next_wakeup(self) -> int:
        if not self._is_primary():  # look again in a second: this node may be promoted
            return self._clock.now() + MICROS
        times = [self._next_retention, *self._due.values()]
        if self._next_expiry is not None:
            times.append(self._next_expiry)
        if self._next_schedule is not None:
            times.append(self._next_schedule)
        return min(times)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.run_once(self._clock.now())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("maintenance run failed")
                await asyncio.sleep(1)
                continue
            delay = (self._next_wakeup() - self._clock.now()) / MICROS
            if delay > 0:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
                # lands as the wait completes, and stop() would hang until the next timer.
                try:
                    async with asyncio.timeout(min(delay, 3600)):
                        await self._wake.wait()
                except TimeoutError:
                    pass
