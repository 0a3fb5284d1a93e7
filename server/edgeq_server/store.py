"""The store: every SQL statement edgeq runs, and nothing else.

A ``Store`` wraps one apsw connection. Write methods run inside the writer thread's
transaction (``writer.py`` opens it, wraps each call in a savepoint and commits the
group); read methods run on reader connections. Every method that depends on time takes
``now`` (microseconds) so tests drive it with a fixed clock.

A lease is "live" while the job is RUNNING with that ``lease_id`` and ``now`` is before
``lease_expires_at``; Ack, Nack and Heartbeat on anything else report STALE and change
nothing, whether or not the expiry sweep has run yet.

Retried writes get the same outcome and change nothing more (under replicated durability a
write can commit and its reply still be lost, so clients retry it):

- Ack/Nack record the lease they settled in ``settled_lease_id``. An Ack again with that
  token while the job is still COMPLETED, or a Nack again while it is still PENDING or
  FAILED from that Nack, is OK once more: the row is untouched (no second attempt, no new
  backoff, the first result kept) and the ``Settled`` says ``replay=True`` with no
  ``job_id``, so the caller neither returns credit nor counts it twice. Leasing,
  cancelling or redriving the job clears ``settled_lease_id``: after that (and after an
  expiry, which settles nothing) the old token is STALE as before.
- CancelJob on a CANCELLED job and RetryJob on a PENDING job return the job unchanged.

A generated key of the form ``auto-<UUID>`` (what the SDKs send for a job without a
caller's key) is not stored as text: the job takes the UUID as its id, with ``auto_key = 1``
(migration 5), unless the job brings its own id or that id is taken. Reads give the key
back as ``'auto-' || id``; lookups by key try that id first, then the key column.
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import apsw

from .errors import FailedPrecondition, NotFound
from .models import (
    AckItem,
    Backoff,
    Bulk,
    Cancelled,
    DueAt,
    EnqueueResult,
    Extended,
    Job,
    JobSpec,
    JobState,
    LeaseOutcome,
    NackItem,
    QueueDepth,
    ScheduleRow,
    Selection,
)
from .tokens import LeaseRef

_COLUMNS = (
    "id, queue_name, payload, status, attempts, max_attempts, priority, run_at, created_at,"
    " started_at, completed_at, lease_expires_at, lease_id, worker_id, error_message,"
    " CASE WHEN auto_key THEN 'auto-' || id ELSE idempotency_key END, headers, result, unique_key,"
    " progress, progress_message, cancelled_lease_id IS NOT NULL, concurrency_key, concurrency_limit, grp"
)
def _tokens(jobs: int, period_us: int, tokens: float, at: int, now: int) -> float:
    """A rate limit's bucket at ``now``: refilled evenly (``jobs`` per ``period_us``) since
    ``at``, capped at ``jobs`` (the largest burst)."""
    return float(min(jobs, tokens + max(0, now - at) * jobs / period_us))


def _glob_prefix(text: str) -> str:
    """A case-sensitive GLOB pattern matching strings that begin with ``text``."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text) + "*"


#: A generated idempotency key, stored as its job's id (see the module docstring).
_AUTO_KEY = re.compile(r"auto-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def _auto_id(key: str | None) -> str | None:
    """The UUID of an ``auto-<UUID>`` key (lowercase UUID text), else None."""
    m = _AUTO_KEY.fullmatch(key) if key else None
    return m.group(1) if m else None


# worker_id names the holder of the current lease, so it goes with the lease.
_CLEAR_LEASE = "lease_id = NULL, lease_expires_at = NULL, lease_us = NULL, worker_id = NULL"
_FINAL = "('completed', 'failed', 'cancelled')"
# Settling moves the lease id to settled_lease_id (SET sees the row's old values).
_SETTLE_LEASE = f"settled_lease_id = lease_id, {_CLEAR_LEASE}"


def _job(row: Any) -> Job:
    headers = row[16]
    return Job(
        id=str(row[0]),
        queue=str(row[1]),
        payload=bytes(row[2]),
        state=JobState(row[3]),
        attempts=int(row[4]),
        max_attempts=int(row[5]),
        priority=int(row[6]),
        run_at=int(row[7]),
        created_at=int(row[8]),
        started_at=row[9],
        completed_at=row[10],
        lease_expires_at=row[11],
        lease_id=row[12],
        worker_id=row[13],
        error_message=row[14],
        idempotency_key=row[15],
        headers=json.loads(headers) if headers else {},
        result=row[17],
        unique_key=row[18],
        progress=row[19],
        progress_message=row[20],
        cancel_requested=bool(row[21]),
        concurrency_key=row[22],
        concurrency_limit=int(row[23]),
        group=str(row[24]),
    )


#: Jobs of one fair group a gate may hold back in one claim before the group sits it out.
GATE_SKIPS = 64


class Candidate(NamedTuple):
    """A job a claim may take: ``sort`` orders it among the queues' candidates."""

    sort: tuple[int, int, int]
    rowid: int
    queue: str


class Turn(NamedTuple):
    """A fair group's turn in a claim: its pass before and after the job it gave."""

    group: str
    before: float
    after: float


class GroupRow(NamedTuple):
    """One fair group of a queue, as ListGroups shows it."""

    group: str
    weight: int
    pending: int  # ready now
    running: int


class QueueState(NamedTuple):
    """What a claim reads of its queues' rows (``Store._queue_state``)."""

    paused: set[str]
    buckets: dict[str, float]  # rate-limited queues: their tokens now
    keyed: set[str]
    grouped: set[str]
    key_rates: dict[str, KeyRate]


class KeyRate(NamedTuple):
    """A queue's per-key rate limit: each value of ``header`` gets ``jobs`` per ``period_us``."""

    header: str
    jobs: int
    period_us: int


class Gate:
    """Which ready jobs of one queue a claim may take, asked in claim order: a job with a
    concurrency key while fewer than its limit of the key's jobs run (counting those taken
    here), a job whose per-key rate limit's bucket has a whole token left. Remembers what
    it held back: ``held_key`` (a concurrency key: look again when a lease ends) and
    ``next_token`` (a rate key: look again then)."""

    def __init__(self, cur: apsw.Cursor, queue: str, now: int, keyed: bool, rate: KeyRate | None) -> None:
        # Its own cursor: it reads buckets while the caller's cursor walks the jobs.
        self.cur, self.queue, self.now, self.rate = cur.getconnection().cursor(), queue, now, rate
        self.running: dict[str, int] = {}
        if keyed:
            self.running = {
                str(k): int(n) for k, n in cur.execute(
                    "SELECT concurrency_key, count(*) FROM jobs WHERE queue_name = ? AND status = 'running'"
                    " AND concurrency_key IS NOT NULL GROUP BY concurrency_key",
                    (queue,),
                )
            }
        self.taken: dict[str, int] = {}
        self.tokens: dict[str, float] = {}  # rate key -> its tokens now
        self.charged: dict[int, str] = {}  # rowid -> the rate key it spends a token of
        self.spent: dict[str, int] = {}
        self.held_key = False
        self.saturated: set[str] = set()  # concurrency keys at their limit
        self.next_token: int | None = None

    @property
    def columns(self) -> str:
        """What ``admit`` needs of each row, after rowid, priority, run_at."""
        return "concurrency_key, concurrency_limit, " + ("headers" if self.rate else "NULL")

    def admit(self, rowid: int, key: str | None, key_limit: int, headers: str | None) -> bool:
        if key is not None and self.running.get(key, 0) + self.taken.get(key, 0) >= max(1, key_limit):
            self.held_key = True
            self.saturated.add(key)
            return False
        if self.rate is not None and headers:
            value = json.loads(headers).get(self.rate.header)
            if value is not None:
                left = self._tokens(value) - self.spent.get(value, 0)
                if left < 1:
                    rate = self.rate
                    at = self.now + max(1, math.ceil((1 - left) * rate.period_us / rate.jobs))
                    self.next_token = at if self.next_token is None else min(self.next_token, at)
                    return False
                self.spent[value] = self.spent.get(value, 0) + 1
                self.charged[rowid] = value
        if key is not None:
            self.taken[key] = self.taken.get(key, 0) + 1
        return True

    def _tokens(self, value: str) -> float:
        if value not in self.tokens:
            assert self.rate is not None
            row = self.cur.execute(
                "SELECT tokens, at FROM rate_keys WHERE queue_name = ? AND key = ?", (self.queue, value)
            ).fetchone()
            jobs, period = self.rate.jobs, self.rate.period_us
            self.tokens[value] = float(jobs) if row is None else _tokens(jobs, period, row[0], row[1], self.now)
        return self.tokens[value]

    def charge(self, rowids: Iterable[int]) -> None:
        """Spend the rate keys' tokens of the jobs the claim took (not those it cut off)."""
        spent: dict[str, int] = {}
        for rowid in rowids:
            if rowid in self.charged:
                spent[self.charged[rowid]] = spent.get(self.charged[rowid], 0) + 1
        for value, n in spent.items():
            self.cur.execute(
                "INSERT INTO rate_keys (queue_name, key, tokens, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (queue_name, key) DO UPDATE SET tokens = excluded.tokens, at = excluded.at",
                (self.queue, value, self.tokens[value] - n, self.now),
            )


class Live(NamedTuple):
    """A live lease's job, as a settle or heartbeat reads it."""

    queue: str
    attempts: int
    max_attempts: int
    lease_us: int
    started_at: int


@dataclass(frozen=True, slots=True)
class Settled:
    """What one Ack/Nack item did, for the dispatcher to return credit.

    ``replay``: a retry of an Ack/Nack that already settled this lease (OK again, nothing
    changed). Its ``job_id`` is None so no credit is returned twice; ``queue``, ``state``
    and ``run_at`` describe the job as the first settle left it. Count it nowhere."""

    outcome: LeaseOutcome
    job_id: str | None = None
    queue: str | None = None
    state: JobState | None = None  # state after the change
    run_at: int | None = None  # when a retried job may run again
    replay: bool = False
    ran_us: int | None = field(default=None, compare=False)  # how long the attempt ran (a measure)


@dataclass(frozen=True, slots=True)
class Expired:
    """A lease the expiry sweep ended."""

    job_id: str
    queue: str
    state: JobState  # PENDING (will retry) or FAILED (attempts exhausted)
    run_at: int


@dataclass(frozen=True, slots=True)
class QueueCounts:
    queue: str
    pending: int = 0
    scheduled: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    oldest_ready_run_at: int | None = None
    paused: bool = False
    rate_jobs: int = 0  # the rate limit: jobs per period (0: none)
    rate_period_us: int = 0
    rate_limited: bool = False  # ready jobs wait for tokens now
    groups: int = 0  # fair groups with PENDING jobs
    key_rate: KeyRate | None = None  # the per-key rate limit


class Store:
    """All SQL. One instance per connection; not thread-safe (one thread per connection)."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn

    # ----------------------------------------------------------------- transactions
    # The writer drives these; nothing else opens transactions.

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if not self.conn.in_transaction:
            return
        self.conn.execute("ROLLBACK")

    def savepoint(self) -> None:
        self.conn.execute("SAVEPOINT op")

    def release(self) -> None:
        self.conn.execute("RELEASE op")

    def rollback_to_savepoint(self) -> None:
        self.conn.execute("ROLLBACK TO op; RELEASE op")

    def reserve_txids(self, up_to: int) -> int:
        """Record (inside the current transaction) that txids up to ``up_to`` may be used."""
        self.conn.execute("UPDATE node SET txid = max(txid, ?)", (up_to,))
        return up_to

    # ----------------------------------------------------------------- node facts

    def txid(self) -> int:
        return int(self.conn.execute("SELECT txid FROM node").get)

    def token_key(self) -> bytes:
        return bytes(self.conn.execute("SELECT token_key FROM node").get)

    # ----------------------------------------------------------------- writes

    def enqueue(self, specs: Sequence[JobSpec], now: int, new_id: Iterable[str]) -> list[EnqueueResult]:
        """Insert jobs; a (queue, idempotency_key) already retained (or earlier in this
        batch), or a sender-chosen ``job_id`` already stored, returns that job's id with
        duplicate=True and stores nothing."""
        ids = iter(new_id)
        results: list[EnqueueResult] = []
        seen: dict[tuple[str, str], EnqueueResult] = {}
        seen_ids: dict[str, EnqueueResult] = {}
        seen_unique: dict[tuple[str, str], EnqueueResult] = {}  # stored by this batch (PENDING)
        keyed: set[str] = set()  # queues this batch marked as having keyed jobs
        grouped: set[str] = set()  # queues this batch marked as having fair groups
        cur = self.conn.cursor()
        for queue in {s.queue for s in specs}:
            cur.execute(
                "INSERT INTO queues (name, paused, updated_at) VALUES (?, 0, ?) ON CONFLICT (name) DO NOTHING",
                (queue, now),
            )
        for spec in specs:
            key = (spec.queue, spec.idempotency_key) if spec.idempotency_key else None
            auto_id = _auto_id(spec.idempotency_key)
            auto_taken = False  # auto_id names another job: store this one the usual way
            if key is not None:
                if key in seen:
                    first = seen[key]
                    results.append(EnqueueResult(first.job_id, True, first.queue, first.run_at))
                    continue
                row = None
                if auto_id is not None:
                    by_id = cur.execute(
                        "SELECT queue_name, auto_key, run_at FROM jobs WHERE id = ?", (auto_id,)
                    ).fetchone()
                    if by_id is not None and by_id[1] and by_id[0] == spec.queue:
                        row = (auto_id, by_id[2])
                    auto_taken = by_id is not None or auto_id in seen_ids
                if row is None:
                    row = cur.execute(
                        "SELECT id, run_at FROM jobs WHERE queue_name = ? AND idempotency_key = ?", key
                    ).fetchone()
                if row is not None:
                    res = EnqueueResult(str(row[0]), True, spec.queue, int(row[1]))
                    seen[key] = res
                    results.append(res)
                    if spec.job_id is not None and spec.job_id != res.job_id:
                        # Accepted at the edge under another id: that id names this job too.
                        cur.execute(
                            "INSERT INTO job_aliases (alias, job_id) VALUES (?, ?) ON CONFLICT (alias) DO NOTHING",
                            (spec.job_id, res.job_id),
                        )
                    continue
            if spec.job_id is not None:
                if spec.job_id in seen_ids:
                    first = seen_ids[spec.job_id]
                    results.append(EnqueueResult(first.job_id, True, first.queue, first.run_at))
                    continue
                row = cur.execute("SELECT queue_name, run_at FROM jobs WHERE id = ?", (spec.job_id,)).fetchone()
                if row is not None:
                    res = EnqueueResult(spec.job_id, True, str(row[0]), int(row[1]))
                    seen_ids[spec.job_id] = res
                    results.append(res)
                    continue
            if spec.unique_key is not None:
                active = self._active_unique(cur, spec, seen_unique)
                if active is not None:
                    results.append(active)
                    if key is not None:
                        seen[key] = active
                    if spec.job_id is not None:
                        # Accepted at the edge under its own id: that id names the active job.
                        cur.execute(
                            "INSERT INTO job_aliases (alias, job_id) VALUES (?, ?) ON CONFLICT (alias) DO NOTHING",
                            (spec.job_id, active.job_id),
                        )
                    continue
            if spec.group and spec.queue not in grouped:
                grouped.add(spec.queue)
                self._mark_grouped(cur, spec.queue)
            compact = auto_id is not None and spec.job_id is None and not auto_taken
            job_id = spec.job_id or (auto_id if compact else None) or next(ids)
            run_at = now if spec.run_at is None else spec.run_at
            cur.execute(
                "INSERT INTO jobs (id, queue_name, payload, status, attempts, max_attempts,"
                " priority, run_at, created_at, idempotency_key, headers, auto_key, unique_key, concurrency_key,"
                " concurrency_limit, grp) VALUES (?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    spec.queue,
                    spec.payload,
                    spec.max_attempts,
                    spec.priority,
                    run_at,
                    now,
                    None if compact else spec.idempotency_key,
                    json.dumps(spec.headers, separators=(",", ":")) if spec.headers else None,
                    int(compact),
                    spec.unique_key,
                    spec.concurrency_key,
                    spec.concurrency_limit if spec.concurrency_key else 0,
                    spec.group,
                ),
            )
            if spec.concurrency_key is not None and spec.queue not in keyed:
                keyed.add(spec.queue)
                cur.execute("UPDATE queues SET keyed = 1 WHERE name = ? AND keyed = 0", (spec.queue,))
            res = EnqueueResult(job_id, False, spec.queue, run_at)
            if key is not None:
                seen[key] = res
            if spec.unique_key is not None:
                seen_unique[(spec.queue, spec.unique_key)] = res
            seen_ids[job_id] = res
            results.append(res)
        return results

    def _mark_grouped(self, cur: apsw.Cursor, queue: str) -> None:
        """The queue's first job with a fair group: from now on its claims take turns
        between groups; its jobs without one form the default group '' (the ones already
        pending get its row here, later ones through the triggers)."""
        cur.execute("UPDATE queues SET grouped = 1 WHERE name = ? AND grouped = 0", (queue,))
        if self.conn.changes():
            cur.execute(
                "INSERT INTO job_groups (queue_name, grp, pass, due_at) SELECT ?1, '', 0, min(run_at) FROM jobs"
                " WHERE queue_name = ?1 AND grp = '' AND status = 'pending' HAVING min(run_at) IS NOT NULL"
                " ON CONFLICT (queue_name, grp) DO UPDATE SET due_at = excluded.due_at",
                (queue,),
            )

    @staticmethod
    def _active_unique(
        cur: apsw.Cursor, spec: JobSpec, seen: dict[tuple[str, str], EnqueueResult]
    ) -> EnqueueResult | None:
        """The job that makes ``spec`` a duplicate by its unique key: one stored earlier in
        this batch (PENDING), else the oldest PENDING (or, for ACTIVE uniqueness, RUNNING)
        job of the queue with that key."""
        assert spec.unique_key is not None
        earlier = seen.get((spec.queue, spec.unique_key))
        if earlier is not None:
            return EnqueueResult(earlier.job_id, True, earlier.queue, earlier.run_at, unique=True)
        states = "('pending', 'running')" if spec.unique_running else "('pending')"
        row = cur.execute(
            f"SELECT id, run_at FROM jobs WHERE queue_name = ? AND unique_key = ? AND status IN {states}"
            " ORDER BY rowid LIMIT 1",
            (spec.queue, spec.unique_key),
        ).fetchone()
        return None if row is None else EnqueueResult(str(row[0]), True, spec.queue, int(row[1]), unique=True)

    def claim(
        self, queues: Sequence[str], limit: int, worker_id: str, lease_us: int, now: int,
        throttled: dict[str, int] | None = None, key_waiting: set[str] | None = None,
    ) -> list[Job]:
        """Lease up to ``limit`` due jobs from the unpaused ``queues``: highest priority
        first, then run_at, then enqueue order. Each gets a fresh ``lease_id``. A queue
        with a rate limit gives at most its whole tokens (its bucket is refilled to now and
        charged for what it gave); when its tokens held jobs back, ``throttled[queue]`` is
        set to when its next token comes (the caller looks again then). Jobs with a
        concurrency key are taken only while fewer than their limit of the key's jobs run,
        in order within the key; a queue whose ready jobs such a limit held back goes into
        ``key_waiting`` (the caller looks again when a lease ends). A queue with fair
        groups gives its jobs in turns between its groups (``_group_turns``); its order
        across the other queues is kept as it gave them."""
        if limit <= 0 or not queues:
            return []
        cur = self.conn.cursor()
        state = self._queue_state(cur, queues, now)
        buckets = state.buckets
        live = [q for q in dict.fromkeys(queues) if q not in state.paused]  # a repeated name would claim a job twice
        if not live:
            return []
        lists: list[list[Candidate]] = []  # per queue, in that queue's claim order
        turns: dict[int, Turn] = {}  # rowid -> its group's turn, for grouped queues
        gates: list[Gate] = []
        for queue in live:
            allowed = limit if queue not in buckets else min(limit, int(buckets[queue]))
            if allowed <= 0:
                if throttled is not None and self._has_ready(cur, queue, now):
                    throttled[queue] = self._next_token(cur, queue, buckets[queue], now)
                continue
            want = allowed + (queue in buckets)  # one more: were jobs held back?
            gate = None
            if queue in state.keyed or queue in state.key_rates:
                gate = Gate(cur, queue, now, queue in state.keyed, state.key_rates.get(queue))
                gates.append(gate)
            if queue in state.grouped:
                picks = self._group_turns(cur, queue, want, now, gate)
                ordered: list[Candidate] = []
                for priority, run_at, rowid, turn in picks:
                    sort = (-priority, run_at, rowid)
                    if ordered and ordered[-1].sort > sort:
                        sort = ordered[-1].sort  # keep the turns' order in the merge below
                    ordered.append(Candidate(sort, rowid, queue))
                    turns[rowid] = turn
            elif gate is not None:
                ready = self._gated_candidates(cur, queue, want, now, gate)
                ordered = [Candidate((-p, r, rowid), rowid, queue) for p, r, rowid in ready]
            else:
                ordered = [
                    Candidate((-int(p), int(r), int(rowid)), int(rowid), queue)
                    for rowid, p, r in cur.execute(
                        "SELECT rowid, priority, run_at FROM jobs WHERE queue_name = ? AND grp = ''"
                        " AND status = 'pending' AND run_at <= ? ORDER BY priority DESC, run_at, rowid LIMIT ?",
                        (queue, now, want),
                    )
                ]
            if gate is not None:
                if gate.held_key and key_waiting is not None:
                    key_waiting.add(queue)
                if gate.next_token is not None and throttled is not None:
                    throttled[queue] = gate.next_token
            if queue in buckets and len(ordered) > int(buckets[queue]):
                ordered = ordered[: int(buckets[queue])]
                if throttled is not None:
                    at = self._next_token(cur, queue, buckets[queue] - len(ordered), now)
                    throttled[queue] = min(at, throttled.get(queue, at))
            if ordered:
                lists.append(ordered)
        picked = list(itertools.islice(heapq.merge(*lists), limit))
        if not picked:
            return []
        chosen = [c.rowid for c in picked]
        if buckets:
            spent: dict[str, int] = {}
            for c in picked:
                spent[c.queue] = spent.get(c.queue, 0) + 1
            for queue, tokens in buckets.items():
                cur.execute("UPDATE queues SET rate_tokens = ?, rate_at = ? WHERE name = ?",
                            (tokens - spent.get(queue, 0), now, queue))
        if turns:
            self._take_turns(cur, [(c.queue, turns[c.rowid]) for c in picked if c.rowid in turns])
        for gate in gates:
            gate.charge(chosen)
        order = {rowid: i for i, rowid in enumerate(chosen)}
        rows: list[Any] = cur.execute(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?,"
            " lease_expires_at = ?, lease_us = ?, lease_id = lower(hex(randomblob(8))),"
            " worker_id = ?, settled_lease_id = NULL WHERE rowid IN (SELECT value FROM json_each(?))"
            f" RETURNING rowid, {_COLUMNS}",
            (now, now + lease_us, lease_us, worker_id or None, json.dumps(chosen)),
        ).fetchall()
        rows.sort(key=lambda r: order[int(r[0])])
        return [_job(r[1:]) for r in rows]

    def _group_turns(
        self, cur: apsw.Cursor, queue: str, want: int, now: int, gate: Gate | None
    ) -> list[tuple[int, int, int, Turn]]:
        """Up to ``want`` claimable jobs of a queue with fair groups, in turn order: the
        group with the lowest pass (its leases / its weight) that has a ready job gives its
        next job (priority, run_at, enqueue order within the group) and its pass grows by
        1 / weight (stride scheduling). Reads only the groups whose turn comes, a page at a
        time (``job_groups_turn``), and one job at a time from each (``jobs_claim``), so
        the cost does not grow with the number of groups or the backlogs. A group found
        with no ready job gets its due_at recomputed (NULL when it has no PENDING job).
        With a ``gate`` (concurrency keys, per-key rate limits) a group's jobs the gate
        holds back are passed over, at most ``GATE_SKIPS`` per group and claim (then the
        group sits this claim out). Returns (priority, run_at, rowid, turn)."""
        page = want + 8
        heap: list[tuple[float, int, str, int]] = []  # (pass, due_at, group, weight)
        after: tuple[float, int, str] | None = None  # the last group read; None: none yet
        more = True
        readers: dict[str, Iterator[Any]] = {}
        skips: dict[str, int] = {}
        cursors: list[apsw.Cursor] = []
        gave: set[str] = set()
        empty: list[str] = []
        out: list[tuple[int, int, int, Turn]] = []
        columns = gate.columns if gate is not None else "NULL, 0, NULL"
        try:
            while len(out) < want:
                if more and (not heap or after is None or heap[0][0] > after[0]):
                    rows: list[Any] = cur.execute(
                        "SELECT pass, due_at, grp, weight FROM job_groups WHERE queue_name = ?1"
                        " AND due_at IS NOT NULL AND due_at <= ?2"
                        + ("" if after is None else " AND (pass, due_at, grp) > (?4, ?5, ?6)")
                        + " ORDER BY pass, due_at, grp LIMIT ?3",
                        (queue, now, page, *(after or ())),
                    ).fetchall()
                    more = len(rows) == page
                    for p, d, g, w in rows:
                        heapq.heappush(heap, (float(p), int(d), str(g), int(w)))
                    if rows:
                        after = (float(rows[-1][0]), int(rows[-1][1]), str(rows[-1][2]))
                    continue
                if not heap:
                    break
                p, d, g, w = heapq.heappop(heap)
                reader = readers.get(g)
                if reader is None:
                    c = self.conn.cursor()
                    cursors.append(c)
                    reader = readers[g] = iter(c.execute(
                        f"SELECT rowid, priority, run_at, {columns} FROM jobs"
                        " WHERE queue_name = ? AND grp = ? AND status = 'pending' AND run_at <= ?"
                        " ORDER BY priority DESC, run_at, rowid",
                        (queue, g, now),
                    ))
                for rowid, priority, run_at, key, key_limit, headers in reader:
                    if gate is not None and not gate.admit(rowid, key, int(key_limit), headers):
                        skips[g] = skips.get(g, 0) + 1
                        if skips[g] >= GATE_SKIPS:
                            break
                        continue
                    out.append((int(priority), int(run_at), int(rowid), Turn(g, p, p + 1.0 / w)))
                    gave.add(g)
                    heapq.heappush(heap, (p + 1.0 / w, d, g, w))
                    break
                else:
                    if g not in gave and g not in skips:
                        empty.append(g)
        finally:
            for c in cursors:
                c.close(True)
        for g in empty:
            cur.execute(
                "UPDATE job_groups SET due_at = (SELECT min(run_at) FROM jobs"
                " WHERE queue_name = ?1 AND grp = ?2 AND status = 'pending') WHERE queue_name = ?1 AND grp = ?2",
                (queue, g),
            )
        return out

    @staticmethod
    def _take_turns(cur: apsw.Cursor, taken: Sequence[tuple[str, Turn]]) -> None:
        """Charge the groups whose jobs a claim took: each group's pass moves past its last
        turn; the queue's virtual time (where a group that comes back starts) to the
        latest turn taken."""
        passes: dict[tuple[str, str], float] = {}
        clock: dict[str, float] = {}
        for queue, turn in taken:
            passes[(queue, turn.group)] = max(passes.get((queue, turn.group), 0.0), turn.after)
            clock[queue] = max(clock.get(queue, 0.0), turn.before)
        for (queue, group), after in passes.items():
            cur.execute("UPDATE job_groups SET pass = ? WHERE queue_name = ? AND grp = ?", (after, queue, group))
        for queue, at in clock.items():
            cur.execute("UPDATE queues SET group_pass = max(group_pass, ?) WHERE name = ?", (at, queue))

    def unclaim(self, job_ids: Sequence[tuple[str, str]], now: int) -> int:
        """Return just-claimed jobs that never reached a worker (the stream closed first)
        to PENDING without counting the attempt. Takes (job_id, lease_id) pairs."""
        n = 0
        cur = self.conn.cursor()
        for job_id, lease_id in job_ids:
            cur.execute(
                "UPDATE jobs SET status = 'pending', attempts = attempts - 1, started_at = NULL,"
                f" {_CLEAR_LEASE}"
                " WHERE id = ? AND lease_id = ? AND status = 'running'",
                (job_id, lease_id),
            )
            n += self.conn.changes()
        return n

    def _live(self, cur: apsw.Cursor, ref: LeaseRef, now: int) -> Live | None:
        row: Any = cur.execute(
            "SELECT queue_name, attempts, max_attempts, lease_us, started_at FROM jobs"
            " WHERE id = ? AND lease_id = ? AND status = 'running' AND lease_expires_at > ?",
            (ref.job_id, ref.lease_id, now),
        ).fetchone()
        if row is None:
            return None
        return Live(str(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4] or now))

    def _replay(self, cur: apsw.Cursor, ref: LeaseRef, states: str) -> Settled | None:
        """The Settled of a retried Ack/Nack: ``ref`` settled the job, which is still in one
        of ``states`` (an SQL list) as that settle left it; None otherwise (STALE)."""
        row: Any = cur.execute(
            f"SELECT queue_name, status, run_at FROM jobs WHERE id = ? AND settled_lease_id = ? AND status IN {states}",
            (ref.job_id, ref.lease_id),
        ).fetchone()
        if row is None:
            return None
        state = JobState(row[1])
        run_at = int(row[2]) if state is JobState.PENDING else None
        return Settled(LeaseOutcome.OK, None, str(row[0]), state, run_at, replay=True)

    def ack(self, items: Sequence[AckItem], now: int) -> list[Settled]:
        """Complete live leases; ``None`` refs (bad signature) are INVALID. Acking again a
        lease this token already acked is OK (``replay``) and changes nothing."""
        cur = self.conn.cursor()
        out: list[Settled] = []
        for ref, result in items:
            if ref is None:
                out.append(Settled(LeaseOutcome.INVALID))
                continue
            row = cur.execute(
                "UPDATE jobs SET status = 'completed', completed_at = ?, result = ?,"
                f" {_SETTLE_LEASE} WHERE id = ? AND lease_id = ? AND status = 'running'"
                " AND lease_expires_at > ? RETURNING queue_name, started_at",
                (now, result or None, ref.job_id, ref.lease_id, now),
            ).fetchone()
            if row is None:
                out.append(self._replay(cur, ref, "('completed')") or Settled(LeaseOutcome.STALE, ref.job_id))
            else:
                ran = now - int(row[1]) if row[1] is not None else None
                out.append(Settled(LeaseOutcome.OK, ref.job_id, str(row[0]), JobState.COMPLETED, ran_us=ran))
        return out

    def nack(
        self,
        items: Sequence[NackItem],
        backoff: Backoff,
        now: int,
    ) -> list[Settled]:
        """Fail live leases: (ref, error_message, retry_delay_us or None, terminal).
        Retries after the delay (or backoff) unless terminal or out of attempts. Nacking
        again a lease this token already nacked, while the job is still PENDING or FAILED
        from it, is OK (``replay``) and changes nothing: no attempt, no new backoff."""
        cur = self.conn.cursor()
        out: list[Settled] = []
        for ref, message, delay_us, terminal in items:
            if ref is None:
                out.append(Settled(LeaseOutcome.INVALID))
                continue
            live = self._live(cur, ref, now)
            if live is None:
                out.append(self._replay(cur, ref, "('pending', 'failed')") or Settled(LeaseOutcome.STALE, ref.job_id))
                continue
            queue, attempts, max_attempts = live.queue, live.attempts, live.max_attempts
            ran = now - live.started_at
            if terminal or attempts >= max_attempts:
                cur.execute(
                    "UPDATE jobs SET status = 'failed', completed_at = ?, error_message = ?,"
                    f" {_SETTLE_LEASE} WHERE id = ?",
                    (now, message or None, ref.job_id),
                )
                out.append(Settled(LeaseOutcome.OK, ref.job_id, queue, JobState.FAILED, ran_us=ran))
            else:
                delay = backoff.delay_us(attempts) if delay_us is None else delay_us
                cur.execute(
                    f"UPDATE jobs SET status = 'pending', run_at = ?, error_message = ?, {_SETTLE_LEASE} WHERE id = ?",
                    (now + delay, message or None, ref.job_id),
                )
                out.append(Settled(LeaseOutcome.OK, ref.job_id, queue, JobState.PENDING, now + delay, ran_us=ran))
        return out

    def heartbeat(
        self, refs: Sequence[LeaseRef | None], extend_by_us: int | None, now: int,
        progress: Mapping[int, tuple[float, str]] | None = None,
    ) -> list[Extended]:
        """Extend live leases to now + extend_by (or each lease's own length); with
        ``progress`` ({index in refs: (value, message)}), store those jobs' reports too
        (live leases only, like the extension)."""
        cur = self.conn.cursor()
        out: list[Extended] = []
        reports = progress or {}
        for i, ref in enumerate(refs):
            if ref is None:
                out.append(Extended(LeaseOutcome.INVALID, None))
                continue
            value, message = reports.get(i, (None, None))
            row = cur.execute(
                "UPDATE jobs SET lease_expires_at = ? + coalesce(?, lease_us),"
                " progress = coalesce(?, progress), progress_message = CASE WHEN ? IS NULL THEN progress_message"
                " ELSE nullif(?, '') END"
                " WHERE id = ? AND lease_id = ? AND status = 'running' AND lease_expires_at > ?"
                " RETURNING lease_expires_at",
                (now, extend_by_us, value, value, message, ref.job_id, ref.lease_id, now),
            ).fetchone()
            if row is not None:
                out.append(Extended(LeaseOutcome.OK, int(row[0])))
            elif cur.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND status = 'cancelled' AND cancelled_lease_id = ?",
                (ref.job_id, ref.lease_id),
            ).fetchone():
                out.append(Extended(LeaseOutcome.CANCEL_REQUESTED, None))
            else:
                out.append(Extended(LeaseOutcome.STALE, None))
        return out

    def cancel(self, job_id: str, now: int) -> Cancelled:
        """Cancel a PENDING or RUNNING job. Returns the job and whether it was RUNNING.
        A job already CANCELLED (a retried CancelJob) is returned unchanged."""
        cur = self.conn.cursor()
        row = cur.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} not found")
        state = JobState(row[3])
        if state is JobState.CANCELLED:
            return Cancelled(_job(row), False)
        if state.final:
            raise FailedPrecondition(
                f"job {job_id} is {state.value}; only pending or running jobs can be cancelled",
                reason="JOB_NOT_CANCELLABLE",
            )
        job = _job(
            cur.execute(  # the row exists: checked above, same transaction
                "UPDATE jobs SET status = 'cancelled', completed_at = ?, settled_lease_id = NULL,"
                f" cancelled_lease_id = lease_id, {_CLEAR_LEASE} WHERE id = ? RETURNING {_COLUMNS}",
                (now, job_id),
            ).fetchone()
        )
        return Cancelled(job, state is JobState.RUNNING)

    def retry(self, job_id: str, now: int) -> Job:
        """Redrive a FAILED or CANCELLED job: PENDING now, attempts reset. A job already
        PENDING (a retried RetryJob) is returned unchanged."""
        cur = self.conn.cursor()
        row = cur.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} not found")
        state = JobState(row[3])
        if state is JobState.PENDING:
            return _job(row)
        if state not in (JobState.FAILED, JobState.CANCELLED):
            raise FailedPrecondition(
                f"job {job_id} is {state.value}; only failed or cancelled jobs can be retried",
                reason="JOB_NOT_RETRYABLE",
            )
        return _job(
            cur.execute(
                "UPDATE jobs SET status = 'pending', attempts = 0, run_at = ?, completed_at = NULL,"
                f" result = NULL, settled_lease_id = NULL, cancelled_lease_id = NULL, {_CLEAR_LEASE}"
                f" WHERE id = ? RETURNING {_COLUMNS}",
                (now, job_id),
            ).fetchone()
        )

    def _select(self, sel: Selection, limit: int) -> tuple[list[str], bool]:
        """Ids of up to ``limit`` jobs matching ``sel``, oldest first, and whether more match."""
        where = ["queue_name = ?", "status = ?"]
        args: list[object] = [sel.queue, sel.state.value]
        if sel.created_after is not None:
            where.append("created_at >= ?")
            args.append(sel.created_after)
        if sel.created_before is not None:
            where.append("created_at < ?")
            args.append(sel.created_before)
        args.append(limit + 1)
        ids = [
            str(r[0]) for r in self.conn.execute(
                f"SELECT id FROM jobs WHERE {' AND '.join(where)} ORDER BY rowid LIMIT ?", args
            )
        ]
        return ids[:limit], len(ids) > limit

    def cancel_many(self, sel: Selection, limit: int, now: int) -> Bulk:
        """CancelJobs: ``cancel`` for up to ``limit`` PENDING or RUNNING jobs of ``sel``."""
        ids, more = self._select(sel, limit)
        done = [self.cancel(job_id, now) for job_id in ids]
        return Bulk([c.job for c in done], [c.job.id for c in done if c.was_running], more)

    def retry_many(self, sel: Selection, limit: int, now: int) -> Bulk:
        """RetryJobs: ``retry`` for up to ``limit`` FAILED or CANCELLED jobs of ``sel``."""
        ids, more = self._select(sel, limit)
        return Bulk([self.retry(job_id, now) for job_id in ids], [], more)

    # ----------------------------------------------------------------- schedules

    _SCHEDULE_COLUMNS = (
        "name, queue_name, cron, time_zone, template, overlap_skip, missed_run_once, paused, next_run_at,"
        " last_run_at, last_job_id"
    )

    @staticmethod
    def _schedule(row: Any) -> ScheduleRow:
        t = json.loads(row[4])
        template = JobSpec(
            queue=str(row[1]), payload=base64.b64decode(t["payload"]), run_at=None,
            max_attempts=int(t["max_attempts"]), priority=int(t["priority"]), headers=dict(t["headers"]),
            unique_key=t.get("unique_key"), unique_running=bool(t.get("unique_running", True)),
        )
        return ScheduleRow(
            str(row[0]), str(row[1]), str(row[2]), str(row[3]), template, bool(row[5]), bool(row[6]), bool(row[7]),
            row[8], row[9], row[10],
        )

    def upsert_schedule(self, sch: ScheduleRow, now: int) -> ScheduleRow:
        """Create or replace the schedule ``sch.name`` (its tick history is kept on replace)."""
        t = sch.template
        template = json.dumps({
            "payload": base64.b64encode(t.payload).decode(), "headers": t.headers, "priority": t.priority,
            "max_attempts": t.max_attempts, "unique_key": t.unique_key, "unique_running": t.unique_running,
        }, separators=(",", ":"))
        self.conn.execute(
            "INSERT INTO schedules (name, queue_name, cron, time_zone, template, overlap_skip, missed_run_once,"
            " paused, next_run_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET queue_name = excluded.queue_name, cron = excluded.cron,"
            " time_zone = excluded.time_zone, template = excluded.template, overlap_skip = excluded.overlap_skip,"
            " missed_run_once = excluded.missed_run_once, next_run_at = CASE WHEN paused THEN NULL"
            " ELSE excluded.next_run_at END, updated_at = excluded.updated_at",
            (sch.name, sch.queue, sch.cron, sch.time_zone, template, int(sch.overlap_skip), int(sch.missed_run_once),
             0, sch.next_run_at, now, now),
        )
        got = self.get_schedule(sch.name)
        assert got is not None
        return got

    def get_schedule(self, name: str) -> ScheduleRow | None:
        row = self.conn.execute(f"SELECT {self._SCHEDULE_COLUMNS} FROM schedules WHERE name = ?", (name,)).fetchone()
        return None if row is None else self._schedule(row)

    def list_schedules(self) -> list[ScheduleRow]:
        rows = self.conn.execute(f"SELECT {self._SCHEDULE_COLUMNS} FROM schedules ORDER BY name")
        return [self._schedule(r) for r in rows]

    def delete_schedule(self, name: str) -> bool:
        self.conn.execute("DELETE FROM schedules WHERE name = ?", (name,))
        return self.conn.changes() > 0

    def pause_schedule(self, name: str, paused: bool, next_run_at: int | None, now: int) -> ScheduleRow:
        """Pause (``next_run_at`` None) or resume (from ``next_run_at``) a schedule."""
        self.conn.execute(
            "UPDATE schedules SET paused = ?, next_run_at = ?, updated_at = ? WHERE name = ?",
            (int(paused), None if paused else next_run_at, now, name),
        )
        if self.conn.changes() == 0:
            raise NotFound(f"schedule {name} not found")
        got = self.get_schedule(name)
        assert got is not None
        return got

    def due_schedules(self, now: int) -> list[ScheduleRow]:
        """Unpaused schedules whose next tick is at or before ``now``."""
        return [
            self._schedule(r) for r in self.conn.execute(
                f"SELECT {self._SCHEDULE_COLUMNS} FROM schedules WHERE next_run_at <= ? ORDER BY next_run_at", (now,)
            )
        ]

    def schedule_ran(self, name: str, next_run_at: int, last_run_at: int | None, last_job_id: str | None) -> None:
        """A schedule's ticks up to now are done: move it to ``next_run_at`` (and record
        the last tick that enqueued, when one did)."""
        self.conn.execute(
            "UPDATE schedules SET next_run_at = ?, last_run_at = coalesce(?, last_run_at),"
            " last_job_id = coalesce(?, last_job_id) WHERE name = ? AND NOT paused",
            (next_run_at, last_run_at, last_job_id, name),
        )

    def next_schedule_time(self) -> int | None:
        v = self.conn.execute("SELECT min(next_run_at) FROM schedules WHERE next_run_at IS NOT NULL").get
        return None if v is None else int(v)

    def set_paused(self, queue: str, paused: bool, now: int) -> None:
        self.conn.execute(
            "INSERT INTO queues (name, paused, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
            (queue, int(paused), now),
        )

    def expire_leases(self, now: int, limit: int) -> list[Expired]:
        """End up to ``limit`` lapsed leases: back to PENDING (run now), or FAILED when the
        attempt that lapsed was the last one."""
        rows: list[Any] = self.conn.execute(
            "UPDATE jobs SET"
            " status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'pending' END,"
            " completed_at = CASE WHEN attempts >= max_attempts THEN ?1 ELSE NULL END,"
            " run_at = CASE WHEN attempts >= max_attempts THEN run_at ELSE ?1 END,"
            " error_message = 'lease expired (attempt ' || attempts || ' of ' || max_attempts"
            "   || ', worker ' || coalesce(worker_id, '?') || ')',"
            f" {_CLEAR_LEASE}"
            " WHERE rowid IN (SELECT rowid FROM jobs WHERE status = 'running'"
            "   AND lease_expires_at <= ?1 ORDER BY lease_expires_at LIMIT ?2)"
            " RETURNING id, queue_name, status, run_at",
            (now, limit),
        ).fetchall()
        return [Expired(str(r[0]), str(r[1]), JobState(r[2]), int(r[3])) for r in rows]

    def delete_finished(self, state: JobState, completed_before: int, limit: int) -> int:
        """Delete up to ``limit`` jobs in final ``state`` finished before the cutoff."""
        assert state.final
        self.conn.execute(
            "DELETE FROM jobs WHERE rowid IN (SELECT rowid FROM jobs"
            f" WHERE status IN {_FINAL} AND status = ? AND completed_at < ?"
            " ORDER BY completed_at LIMIT ?)",
            (state.value, completed_before, limit),
        )
        return self.conn.changes()

    def delete_orphan_aliases(self, limit: int) -> int:
        """Forget up to ``limit`` aliases of jobs retention deleted."""
        self.conn.execute(
            "DELETE FROM job_aliases WHERE alias IN (SELECT alias FROM job_aliases a"
            " WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE id = a.job_id) LIMIT ?)",
            (limit,),
        )
        return self.conn.changes()

    # ----------------------------------------------------------------- reads

    def get_job(self, job_id: str) -> Job | None:
        """The job with this id, or with this id as an alias (see ``job_aliases``)."""
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            row = self.conn.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE id = (SELECT job_id FROM job_aliases WHERE alias = ?)", (job_id,)
            ).fetchone()
        return None if row is None else _job(row)

    def job_id_by_key(self, queue: str, key: str) -> str | None:
        """The id of the retained job with this (queue, idempotency_key)."""
        auto_id = _auto_id(key)
        if auto_id is not None:
            v = self.conn.execute(
                "SELECT id FROM jobs WHERE id = ? AND queue_name = ? AND auto_key = 1", (auto_id, queue)
            ).get
            if v is not None:
                return str(v)
        v = self.conn.execute("SELECT id FROM jobs WHERE queue_name = ? AND idempotency_key = ?", (queue, key)).get
        return None if v is None else str(v)

    def list_jobs(
        self, queue: str | None, state: JobState | None, after_rowid: int, limit: int, search: str = ""
    ) -> list[tuple[int, Job]]:
        """A page of jobs in enqueue order (rowid), strictly after ``after_rowid``; with
        ``search``, only jobs whose id or idempotency key begins with it (a generated
        ``auto-<uuid>`` key is matched as the text it reads back as)."""
        where = ["rowid > ?"]
        args: list[object] = [after_rowid]
        if queue:
            where.append("queue_name = ?")
            args.append(queue)
        if state is not None:
            where.append("status = ?")
            args.append(state.value)
        if search:
            pattern = _glob_prefix(search)
            where.append(
                "(id GLOB ? OR (auto_key AND 'auto-' || id GLOB ?) OR (NOT auto_key AND idempotency_key GLOB ?))"
            )
            args.extend((pattern, pattern, pattern))
        args.append(limit)
        rows: list[Any] = self.conn.execute(
            f"SELECT rowid, {_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY rowid LIMIT ?",
            args,
        ).fetchall()
        return [(int(r[0]), _job(r[1:])) for r in rows]

    def queue_stats(self, queues: Sequence[str], now: int) -> list[QueueCounts]:
        """Counts by state per queue (one pass over the table); all known queues when
        ``queues`` is empty. Named queues that have never been seen count as empty."""
        cur = self.conn.cursor()
        known: dict[str, bool] = {}
        rates: dict[str, tuple[int, int, bool]] = {}
        grouped: set[str] = set()
        key_rates: dict[str, KeyRate] = {}
        for n, p, jobs, period, tokens, at, is_grouped, kh, kjobs, kperiod in cur.execute(
            "SELECT name, paused, rate_jobs, rate_period_us, rate_tokens, rate_at, grouped,"
            " key_rate_header, key_rate_jobs, key_rate_period_us FROM queues"
        ):
            known[str(n)] = bool(p)
            if kjobs:
                key_rates[str(n)] = KeyRate(str(kh), int(kjobs), int(kperiod))
            if is_grouped:
                grouped.add(str(n))
            if jobs:
                rates[str(n)] = (int(jobs), int(period), _tokens(jobs, period, tokens, at, now) < 1)
        names = sorted(set(queues) if queues else set(known))
        counts: dict[str, Any] = {
            str(r[0]): r[1:]
            for r in cur.execute(
                "SELECT queue_name,"
                " sum(status = 'pending' AND run_at <= ?1), sum(status = 'pending' AND run_at > ?1),"
                " sum(status = 'running'), sum(status = 'completed'), sum(status = 'failed'),"
                " sum(status = 'cancelled'),"
                " min(CASE WHEN status = 'pending' AND run_at <= ?1 THEN run_at END),"
                " count(DISTINCT CASE WHEN status = 'pending' THEN grp END)"
                " FROM jobs WHERE queue_name IN (SELECT value FROM json_each(?2)) GROUP BY queue_name",
                (now, json.dumps(names)),
            )
        }
        out: list[QueueCounts] = []
        for name in names:
            row = counts.get(name, (0, 0, 0, 0, 0, 0, None, 0))
            pending, scheduled, running, completed, failed, cancelled = (int(v or 0) for v in row[:6])
            out.append(
                QueueCounts(
                    name,
                    pending,
                    scheduled,
                    running,
                    completed,
                    failed,
                    cancelled,
                    oldest_ready_run_at=row[6],
                    paused=known.get(name, False),
                    rate_jobs=rates.get(name, (0, 0, False))[0],
                    rate_period_us=rates.get(name, (0, 0, False))[1],
                    rate_limited=pending > 0 and (
                        rates.get(name, (0, 0, False))[2] or self._key_throttled(cur, name, key_rates.get(name), now)
                    ),
                    groups=int(row[7] or 0) if name in grouped else 0,
                    key_rate=key_rates.get(name),
                )
            )
        return out

    @staticmethod
    def _key_throttled(cur: apsw.Cursor, queue: str, rate: KeyRate | None, now: int) -> bool:
        """A key of the queue's per-key limit has no whole token now (its jobs wait)."""
        if rate is None:
            return False
        return cur.execute(
            "SELECT 1 FROM rate_keys WHERE queue_name = ? AND tokens + max(0, ? - at) * 1.0 * ? / ? < 1 LIMIT 1",
            (queue, now, rate.jobs, rate.period_us),
        ).fetchone() is not None

    def queue_depths(self, now: int) -> list[QueueDepth]:
        """Per queue with live jobs: due and scheduled PENDING jobs, RUNNING jobs, the age of
        the oldest due one. Reads only the claim and lease-expiry indexes' rows (the live
        jobs), never the finished ones, so it stays cheap with millions retained."""
        depth: dict[str, list[int]] = {}
        for q, ready, scheduled, oldest in self.conn.execute(
            "SELECT queue_name, sum(run_at <= ?1), sum(run_at > ?1), min(CASE WHEN run_at <= ?1 THEN run_at END)"
            " FROM jobs WHERE status = 'pending' GROUP BY queue_name",
            (now,),
        ):
            depth[str(q)] = [int(ready or 0), int(scheduled or 0), 0, int(oldest) if oldest is not None else now]
        for q, running in self.conn.execute(
            "SELECT queue_name, count(*) FROM jobs WHERE status = 'running' GROUP BY queue_name"
        ):
            depth.setdefault(str(q), [0, 0, 0, now])[2] = int(running)
        return [
            QueueDepth(q, ready, scheduled, running, max(0, now - oldest) / 1e6)
            for q, (ready, scheduled, running, oldest) in sorted(depth.items())
        ]

    def paused_queues(self) -> set[str]:
        return {str(r[0]) for r in self.conn.execute("SELECT name FROM queues WHERE paused = 1")}

    @staticmethod
    def _queue_state(cur: apsw.Cursor, queues: Sequence[str], now: int) -> QueueState:
        """One read of ``queues``' rows for a claim: the paused ones, the tokens now of the
        rate-limited ones, the ones that ever had keyed jobs or fair groups."""
        st = QueueState(set(), {}, set(), set(), {})
        for name, is_paused, is_keyed, is_grouped, jobs, period, tokens, at, kh, kjobs, kperiod in cur.execute(
            "SELECT name, paused, keyed, grouped, rate_jobs, rate_period_us, rate_tokens, rate_at,"
            " key_rate_header, key_rate_jobs, key_rate_period_us FROM queues"
            " WHERE name IN (SELECT value FROM json_each(?))"
            " AND (paused OR keyed OR grouped OR rate_jobs > 0 OR key_rate_jobs > 0)",
            (json.dumps(list(queues)),),
        ):
            if kjobs:
                st.key_rates[str(name)] = KeyRate(str(kh), int(kjobs), int(kperiod))
            if is_paused:
                st.paused.add(str(name))
            if is_keyed:
                st.keyed.add(str(name))
            if is_grouped:
                st.grouped.add(str(name))
            if jobs:
                st.buckets[str(name)] = _tokens(jobs, period, tokens, at, now)
        return st

    @staticmethod
    def _gated_candidates(
        cur: apsw.Cursor, queue: str, want: int, now: int, gate: Gate
    ) -> list[tuple[int, int, int]]:
        """Up to ``want`` claimable jobs of a queue without fair groups whose jobs a ``gate``
        judges (concurrency keys, a per-key rate limit), in claim order, as (priority,
        run_at, rowid). Scans a window in claim order first; when held-back jobs fill it,
        looks again past them (concurrency keys at their limit excluded in SQL; a long
        backlog of one held key at the head of the queue is still walked by the index
        scan: its known cost, which fair groups avoid)."""
        out: list[tuple[int, int, int]] = []
        window = want * 4 + 64
        seen = 0
        for rowid, priority, run_at, key, key_limit, headers in cur.execute(
            f"SELECT rowid, priority, run_at, {gate.columns} FROM jobs"
            " WHERE queue_name = ? AND grp = '' AND status = 'pending' AND run_at <= ?"
            " ORDER BY priority DESC, run_at, rowid LIMIT ?",
            (queue, now, window),
        ):
            seen += 1
            if gate.admit(rowid, key, int(key_limit), headers):
                out.append((int(priority), int(run_at), int(rowid)))
                if len(out) >= want:
                    return out
        if seen < window or len(out) == seen:
            return out
        # The window held mostly held-back jobs: look past them.
        done = {r for _, _, r in out}
        for rowid, priority, run_at, key, key_limit, headers in cur.execute(
            f"SELECT rowid, priority, run_at, {gate.columns} FROM jobs"
            " WHERE queue_name = ? AND grp = '' AND status = 'pending' AND run_at <= ?"
            " AND (concurrency_key IS NULL OR concurrency_key NOT IN (SELECT value FROM json_each(?)))"
            " ORDER BY priority DESC, run_at, rowid",
            (queue, now, json.dumps(sorted(gate.saturated))),
        ):
            if rowid in done:
                continue
            if gate.admit(rowid, key, int(key_limit), headers):
                out.append((int(priority), int(run_at), int(rowid)))
                if len(out) >= want:
                    break
        return out

    @staticmethod
    def _has_ready(cur: apsw.Cursor, queue: str, now: int) -> bool:
        return cur.execute(
            "SELECT 1 FROM jobs WHERE queue_name = ? AND status = 'pending' AND run_at <= ? LIMIT 1", (queue, now)
        ).fetchone() is not None

    @staticmethod
    def _next_token(cur: apsw.Cursor, queue: str, tokens: float, now: int) -> int:
        """When ``queue``'s bucket, holding ``tokens`` now, next has a whole token."""
        row = cur.execute("SELECT rate_jobs, rate_period_us FROM queues WHERE name = ?", (queue,)).fetchone()
        assert row is not None  # a bucket was read from it in this transaction
        jobs, period = int(row[0]), int(row[1])
        missing = 1.0 - (tokens - int(tokens)) if tokens >= 0 else 1.0 - tokens
        return now + max(1, math.ceil(missing * period / jobs))

    def set_rate_limit(self, queue: str, jobs: int, period_us: int, now: int, key_header: str = "") -> None:
        """SetRateLimit: ``jobs`` per ``period_us`` (0: none); the bucket starts full. With
        ``key_header`` the queue's per-key limit instead: each value of that header its own
        bucket (all start full again)."""
        if key_header:
            self.conn.execute(
                "INSERT INTO queues (name, paused, updated_at, key_rate_header, key_rate_jobs, key_rate_period_us)"
                " VALUES (?1, 0, ?5, ?4, ?2, ?3) ON CONFLICT (name) DO UPDATE SET key_rate_header = ?4,"
                " key_rate_jobs = ?2, key_rate_period_us = ?3, updated_at = ?5",
                (queue, jobs, period_us, key_header if jobs else None, now),
            )
            self.conn.execute("DELETE FROM rate_keys WHERE queue_name = ?", (queue,))
            return
        self.conn.execute(
            "INSERT INTO queues (name, paused, updated_at, rate_jobs, rate_period_us, rate_tokens, rate_at)"
            " VALUES (?1, 0, ?4, ?2, ?3, ?2, ?4) ON CONFLICT (name) DO UPDATE SET rate_jobs = ?2,"
            " rate_period_us = ?3, rate_tokens = ?2, rate_at = ?4, updated_at = ?4",
            (queue, jobs, period_us, now),
        )

    def prune_rate_keys(self, now: int, limit: int) -> int:
        """Forget up to ``limit`` per-key buckets that have refilled (a missing row reads as
        a full bucket), and those of queues whose per-key limit is gone."""
        self.conn.execute(
            "DELETE FROM rate_keys WHERE (queue_name, key) IN (SELECT r.queue_name, r.key FROM rate_keys r"
            " LEFT JOIN queues q ON q.name = r.queue_name"
            " WHERE q.key_rate_jobs IS NULL OR q.key_rate_jobs = 0"
            " OR r.tokens + (?1 - r.at) * 1.0 * q.key_rate_jobs / q.key_rate_period_us >= q.key_rate_jobs LIMIT ?2)",
            (now, limit),
        )
        return self.conn.changes()

    def set_group_weight(self, queue: str, group: str, weight: int, now: int) -> None:
        """SetGroupWeight: the group's share of the queue's turns from now on (1..1000)."""
        self.conn.execute(
            "INSERT INTO queues (name, paused, updated_at) VALUES (?, 0, ?) ON CONFLICT (name) DO NOTHING", (queue, now)
        )
        self.conn.execute(
            "INSERT INTO job_groups (queue_name, grp, weight, pass) VALUES (?1, ?2, ?3,"
            " (SELECT group_pass FROM queues WHERE name = ?1)) ON CONFLICT (queue_name, grp) DO UPDATE SET weight = ?3",
            (queue, group, weight),
        )

    def prune_groups(self, limit: int) -> int:
        """Forget up to ``limit`` idle groups (nothing PENDING, as far as a claim has seen)
        that keep the default weight: a group without a row is one that starts level, and
        a job of it that becomes PENDING makes the row again (the triggers)."""
        self.conn.execute(
            "DELETE FROM job_groups WHERE (queue_name, grp) IN (SELECT queue_name, grp FROM job_groups"
            " WHERE due_at IS NULL AND weight = 1 LIMIT ?)",
            (limit,),
        )
        return self.conn.changes()

    def list_groups(self, queue: str, after: str | None, limit: int, now: int) -> tuple[list[GroupRow], bool]:
        """ListGroups: up to ``limit`` of the queue's groups named after ``after`` (None: from
        the first), by name, with their ready and running jobs; and whether more follow. A
        group is listed from its first PENDING job until the sweep after it went idle
        (``prune_groups``), or for good once it has a weight."""
        cur = self.conn.cursor()
        names = [
            (str(g), int(w)) for g, w in cur.execute(
                "SELECT grp, weight FROM job_groups WHERE queue_name = ? AND (?2 IS NULL OR grp > ?2)"
                " ORDER BY grp LIMIT ?3",
                (queue, after, limit + 1),
            )
        ]
        more = len(names) > limit
        names = names[:limit]
        running = {
            str(g): int(n) for g, n in cur.execute(
                "SELECT grp, count(*) FROM jobs WHERE status = 'running' AND queue_name = ?"
                " AND grp IN (SELECT value FROM json_each(?)) GROUP BY grp",
                (queue, json.dumps([g for g, _ in names])),
            )
        }
        out = []
        for group, weight in names:
            ready = cur.execute(
                "SELECT count(*) FROM jobs WHERE queue_name = ? AND grp = ? AND status = 'pending' AND run_at <= ?",
                (queue, group, now),
            ).get
            out.append(GroupRow(group, weight, int(ready or 0), running.get(group, 0)))
        return out, more

    def next_lease_expiry(self) -> int | None:
        v = self.conn.execute("SELECT min(lease_expires_at) FROM jobs WHERE status = 'running'").get
        return None if v is None else int(v)

    def future_due_times(self, now: int) -> list[DueAt]:
        """Per queue, the earliest run_at of a pending job still in the future (startup)."""
        return [
            DueAt(str(q), int(t))
            for q, t in self.conn.execute(
                "SELECT queue_name, min(run_at) FROM jobs WHERE status = 'pending' AND run_at > ? GROUP BY queue_name",
                (now,),
            )
        ]

    def next_due_after(self, queue: str, now: int) -> int | None:
        """Earliest future run_at among one queue's pending jobs."""
        v = self.conn.execute(
            "SELECT min(run_at) FROM jobs WHERE queue_name = ? AND status = 'pending' AND run_at > ?",
            (queue, now),
        ).get
        return None if v is None else int(v)


@dataclass(frozen=True)
class EdgeRow:
    """One Enqueue request waiting in the edge log."""

    seq: int
    request: bytes
    jobs: int
    created_at: int


@dataclass(frozen=True)
class EdgeJob:
    """A job the edge log knows: still waiting (``request`` set, the job at ``index`` in
    it), refused for good (``rejected``), or drained and stored on the primary as
    ``stored_id`` at ``drained_txid``."""

    job_id: str
    request: bytes | None
    index: int
    created_at: int
    rejected: str | None
    drained_txid: int | None
    stored_id: str | None


class EdgeLogTotals(NamedTuple):
    """What an edge log holds: requests, jobs and bytes waiting, refused requests, the
    oldest waiting request's created_at (None when none waits)."""

    requests: int
    jobs: int
    bytes: int
    dead: int
    oldest_at: int | None


class DeadRequest(NamedTuple):
    """One request the primary refused for good, kept with its reason."""

    seq: int
    jobs: int
    created_at: int
    reason: str


class EdgeLogStore:
    """The edge log: a small SQLite file outside the LiteFS mount holding Enqueue requests
    accepted at this node (serialized, ids and keys assigned) until the drain stores them
    on the primary. Every append is durable (synchronous=FULL: fsynced) before it returns.

    ``outbox`` holds the requests in acceptance order (``seq``); a request the primary
    refused for good stays with its reason (``rejected``); a drained one stays, marked
    ``drained_at``, for ``Config.edge_log_keep_seconds`` so that it can be offered again after
    a failover (``reoffer``), then is pruned. ``edge_jobs`` indexes every job
    by id and by (queue, key) so the node finds what it accepted; after the drain it keeps
    the id the primary stored and the txid of that write until this node's database has
    applied it (``forget_applied``), so read-your-writes holds across the hand-over."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.conn = apsw.Connection(path)
        self.conn.set_busy_timeout(5000)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS outbox ("
            " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " request BLOB NOT NULL,"
            " jobs INTEGER NOT NULL CHECK (jobs > 0),"
            " created_at INTEGER NOT NULL,"
            " rejected TEXT,"  # the primary refused it for good: kept, never retried
            " drained_at INTEGER"  # the primary stored it then: kept to offer again
            ") STRICT"
        )
        if "drained_at" not in {str(r[1]) for r in self.conn.execute("PRAGMA table_info(outbox)")}:
            self.conn.execute("ALTER TABLE outbox ADD COLUMN drained_at INTEGER")  # a log from before it
        self.conn.execute(
            "CREATE INDEX IF NOT EXISTS outbox_drained ON outbox (drained_at) WHERE drained_at IS NOT NULL"
        )
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS edge_jobs ("
            " job_id TEXT PRIMARY KEY,"
            " seq INTEGER NOT NULL,"  # the outbox row (gone once drained)
            " idx INTEGER NOT NULL,"  # the job's index in that request
            " queue TEXT NOT NULL,"
            " idempotency_key TEXT NOT NULL,"
            " created_at INTEGER NOT NULL,"
            " drained_txid INTEGER,"  # set once the primary stored it
            " stored_id TEXT"  # the id the primary answered (another on a cross-node key twin)
            ") STRICT, WITHOUT ROWID"
        )
        self.conn.execute("CREATE INDEX IF NOT EXISTS edge_jobs_key ON edge_jobs (queue, idempotency_key)")
        self.conn.execute("CREATE INDEX IF NOT EXISTS edge_jobs_seq ON edge_jobs (seq)")
        self.conn.execute(
            "CREATE INDEX IF NOT EXISTS edge_jobs_drained ON edge_jobs (drained_txid) WHERE drained_txid IS NOT NULL"
        )

    @contextlib.contextmanager
    def transaction(self, durable: bool = True) -> Iterator[None]:
        """``with store.transaction():`` one durable commit. Plain BEGIN/COMMIT statements:
        apsw releases the GIL while they run (the fsync), which its ``with connection``
        block does not. ``durable=False`` skips the fsync (synchronous=NORMAL for this
        commit: a crash may undo it, never corrupt the file; the next durable commit
        fsyncs it too) — for bookkeeping whose loss only repeats work the primary dedupes."""
        if not durable:
            self.conn.execute("PRAGMA synchronous=NORMAL")
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        finally:
            if not durable:
                self.conn.execute("PRAGMA synchronous=FULL")

    def append(self, request: bytes, index: Sequence[tuple[str, str, str]], now: int) -> int:
        """Append one request (inside ``transaction()``): its jobs' [(job_id, queue, key)]
        are indexed. Returns its seq."""
        cur = self.conn.cursor()
        cur.execute("INSERT INTO outbox (request, jobs, created_at) VALUES (?, ?, ?)", (request, len(index), now))
        seq = self.conn.last_insert_rowid()
        cur.executemany(
            "INSERT INTO edge_jobs (job_id, seq, idx, queue, idempotency_key, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id) DO NOTHING",
            [(job_id, seq, i, queue, key, now) for i, (job_id, queue, key) in enumerate(index)],
        )
        return seq

    def oldest(self, limit: int) -> list[EdgeRow]:
        """Up to ``limit`` waiting requests, oldest first."""
        return [
            EdgeRow(int(r[0]), bytes(r[1]), int(r[2]), int(r[3]))
            for r in self.conn.execute(
                "SELECT seq, request, jobs, created_at FROM outbox WHERE rejected IS NULL AND drained_at IS NULL"
                " ORDER BY seq LIMIT ?",
                (limit,),
            )
        ]

    def oldest_created_at(self) -> int | None:
        v = self.conn.execute(
            "SELECT created_at FROM outbox WHERE rejected IS NULL AND drained_at IS NULL ORDER BY seq LIMIT 1"
        ).get
        return None if v is None else int(v)

    def drained(self, seqs: Sequence[int], stored: Sequence[tuple[str, str]], txid: int, now: int) -> None:
        """The primary stored these requests at ``txid``: mark them drained at ``now`` (kept
        to offer again, see ``reoffer``), and remember each job's stored id [(job_id,
        stored_id)] until this node has applied ``txid``. Not fsynced: a crash that undoes
        it makes the drain send these requests again, and the primary answers them as the
        duplicates they are (same job ids)."""
        with self.transaction(durable=False):
            self.conn.executemany(
                "UPDATE edge_jobs SET drained_txid = ?, stored_id = ? WHERE job_id = ?",
                [(txid, stored_id, job_id) for job_id, stored_id in stored],
            )
            self.conn.executemany("UPDATE outbox SET drained_at = ? WHERE seq = ?", [(now, seq) for seq in seqs])

    def reoffer(self, since: int) -> int:
        """Put the requests drained at or after ``since`` back in line (a new primary may
        not have them; it dedupes the ones it has by job id). Returns how many."""
        with self.transaction():
            self.conn.execute("UPDATE outbox SET drained_at = NULL WHERE drained_at >= ?", (since,))
            return self.conn.changes()

    def prune_drained(self, before: int) -> int:
        """Delete the requests drained before ``before``; returns how many drained ones remain."""
        with self.transaction(durable=False):
            self.conn.execute("DELETE FROM outbox WHERE drained_at < ?", (before,))
            return int(self.conn.execute("SELECT count(*) FROM outbox WHERE drained_at IS NOT NULL").get or 0)

    def reject(self, seq: int, reason: str) -> None:
        self.conn.execute("UPDATE outbox SET rejected = ? WHERE seq = ?", (reason, seq))

    def forget_applied(self, txid: int) -> int:
        """Drop the records of drained jobs this node's database has applied (up to ``txid``;
        not fsynced: an undone forget only keeps records the database also has)."""
        with self.transaction(durable=False):
            self.conn.execute("DELETE FROM edge_jobs WHERE drained_txid IS NOT NULL AND drained_txid <= ?", (txid,))
            return self.conn.changes()

    def find(self, job_id: str) -> EdgeJob | None:
        """What the edge log knows of ``job_id``."""
        row = self.conn.execute(
            "SELECT e.job_id, o.request, e.idx, e.created_at, o.rejected, e.drained_txid, e.stored_id"
            " FROM edge_jobs e LEFT JOIN outbox o ON o.seq = e.seq AND o.drained_at IS NULL WHERE e.job_id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        return EdgeJob(
            str(row[0]),
            None if row[1] is None else bytes(row[1]),
            int(row[2]),
            int(row[3]),
            None if row[4] is None else str(row[4]),
            None if row[5] is None else int(row[5]),
            None if row[6] is None else str(row[6]),
        )

    def find_key(self, queue: str, key: str) -> str | None:
        """The id of a job accepted here (waiting, or drained but not yet applied) with this key."""
        row = self.conn.execute(
            "SELECT coalesce(stored_id, job_id) FROM edge_jobs e WHERE queue = ? AND idempotency_key = ?"
            " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.seq = e.seq AND o.rejected IS NOT NULL)"
            " ORDER BY created_at LIMIT 1",
            (queue, key),
        ).fetchone()
        return None if row is None else str(row[0])

    def accepted_by_queue(self) -> dict[str, int]:
        """Waiting jobs per queue."""
        return {
            str(q): int(n)
            for q, n in self.conn.execute(
                "SELECT e.queue, count(*) FROM edge_jobs e JOIN outbox o ON o.seq = e.seq"
                " WHERE o.rejected IS NULL AND o.drained_at IS NULL GROUP BY e.queue"
            )
        }

    def totals(self) -> EdgeLogTotals:
        """Waiting requests, jobs and bytes, refused requests, the oldest created_at."""
        row = self.conn.execute(
            "SELECT count(*), coalesce(sum(jobs), 0), coalesce(sum(length(request)), 0), min(created_at)"
            " FROM outbox WHERE rejected IS NULL AND drained_at IS NULL"
        ).fetchone()
        dead = self.conn.execute("SELECT count(*) FROM outbox WHERE rejected IS NOT NULL").get
        assert row is not None
        return EdgeLogTotals(
            int(row[0]), int(row[1]), int(row[2]), int(dead or 0), None if row[3] is None else int(row[3])
        )

    def pending(self) -> int:
        """Requests still to send (rejected ones excluded)."""
        return int(
            self.conn.execute("SELECT count(*) FROM outbox WHERE rejected IS NULL AND drained_at IS NULL").get or 0
        )

    def dead(self) -> int:
        """Requests the primary refused for good (kept with the reason, never retried)."""
        return int(self.conn.execute("SELECT count(*) FROM outbox WHERE rejected IS NOT NULL").get or 0)

    @classmethod
    def read_only(cls, path: str) -> EdgeLogStore:
        """Open an existing edge log to inspect it (``edgeq edge-log``): nothing is created
        or written, a running server's log included (WAL readers never block its writer)."""
        store = cls.__new__(cls)
        store.conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        store.conn.set_busy_timeout(5000)
        return store

    def dead_rows(self) -> list[DeadRequest]:
        """Every refused request, oldest first."""
        return [
            DeadRequest(int(r[0]), int(r[1]), int(r[2]), str(r[3]))
            for r in self.conn.execute(
                "SELECT seq, jobs, created_at, rejected FROM outbox WHERE rejected IS NOT NULL ORDER BY seq"
            )
        ]

    def close(self) -> None:
        self.conn.close()
