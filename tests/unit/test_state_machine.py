"""A Hypothesis state machine that drives the Store directly against a small Python model
of the job lifecycle: enqueue, claim, ack / nack / heartbeat with live and stale leases,
time passing, the lease-expiry sweep, unclaim, cancel and retry (one job, and in bulk by
queue and state in bounded batches), and enqueue with a unique key (at most one PENDING, or
PENDING-or-RUNNING, job per queue and key), and enqueue with a concurrency key (a claim
leases at most the key's limit of its jobs at once, in order).

After every step the store's rows must equal the model, every RUNNING job must hold exactly
the lease the model handed out, and attempts never exceed max_attempts. Every operation
with a stale lease must report STALE and leave every row byte-for-byte unchanged; a retried
Ack/Nack with the token that settled the job (still as that settle left it) reports OK as
a replay and changes nothing either, as do CancelJob on CANCELLED and RetryJob on PENDING.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from support.factories import NOW, SECOND, new_ids, open_store, rows, spec, write

from edgeq_server.errors import FailedPrecondition, NotFound
from edgeq_server.models import Backoff, Job, JobSpec, JobState, LeaseOutcome, Selection
from edgeq_server.tokens import LeaseRef

QUEUES = ("a", "b", "g")  # "g" gets jobs with fair groups (enqueue_grouped)
#: Only stale nacks pass no delay (and must not use it); live nacks always name one, so
#: the model can predict run_at.
BACKOFF = Backoff(base_us=SECOND, max_us=10 * SECOND)
# Hypothesis orders rules by how many arguments they take, and with swarm testing and only
# 60 examples the order shows in how often each runs. The lifecycle rules (advance, claim,
# enqueue, settle_live) take one packed argument so they come first; cancel/retry and the
# stale settles take several. The initialize step also claims, so every example starts
# with leases to settle, lapse and fence.
ADVANCE = st.tuples(st.sampled_from([1, SECOND - 1, SECOND, 2 * SECOND, 5 * SECOND]), st.booleans())
CLAIM = st.tuples(
    st.sampled_from([("a",), ("b",), ("a", "b"), ("b", "a"), ("g",)]),
    st.integers(1, 3),
    st.sampled_from([SECOND, 2 * SECOND, 5 * SECOND]),
)
#: (queue, max_attempts, delay before it is due, priority)
JOB_PARAMS = st.tuples(
    st.sampled_from(QUEUES), st.integers(1, 3), st.sampled_from([0, 0, SECOND, 3 * SECOND]), st.integers(0, 2)
)


@dataclass
class Model:
    seq: int
    queue: str
    priority: int
    max_attempts: int
    run_at: int
    state: JobState = JobState.PENDING
    attempts: int = 0
    lease_id: str | None = None
    lease_expires_at: int | None = None
    lease_us: int | None = None
    settled_lease_id: str | None = None  # the lease an Ack/Nack settled the job with
    unique_key: str | None = None
    cancelled_lease_id: str | None = None  # the lease CancelJob cancelled the job under
    ckey: str | None = None  # concurrency key: at most climit of the queue's jobs with it RUNNING
    climit: int = 1
    group: str = ""
    rkey: str | None = None  # the value of its header "k" (a per-key rate limit's key)

    def drop_lease(self) -> None:
        self.lease_id = self.lease_expires_at = self.lease_us = None


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="edgeq-sm-")
        self.store = open_store(os.path.join(self.dir, "sm.db"))
        self.now = NOW
        self.jobs: dict[str, Model] = {}
        self.refs: list[LeaseRef] = []  # every lease ever handed out, in order
        self.buckets: dict[str, list[float]] = {}  # queue -> [jobs, period, tokens, at] (SetRateLimit)
        self.key_rates: dict[str, tuple[int, int]] = {}  # queue -> (jobs, period): per value of header "k"
        self.key_buckets: dict[tuple[str, str], list[float]] = {}  # (queue, key) -> [tokens, at]; none: full

    def teardown(self) -> None:
        self.store.conn.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------ model views

    def is_live(self, ref: LeaseRef) -> bool:
        m = self.jobs[ref.job_id]
        return (
            m.state is JobState.RUNNING
            and m.lease_id == ref.lease_id
            and m.lease_expires_at is not None
            and m.lease_expires_at > self.now
        )

    def live_refs(self) -> list[LeaseRef]:
        return [r for r in self.refs if self.is_live(r)]

    def is_settler(self, ref: LeaseRef) -> bool:
        return self.jobs[ref.job_id].settled_lease_id == ref.lease_id

    def stale_refs(self) -> list[LeaseRef]:
        """Leases no Ack/Nack/Heartbeat may use (settlers excluded: see replays)."""
        return [r for r in self.refs if not self.is_live(r) and not self.is_settler(r)]

    def stale_outcome(self, op: str, ref: LeaseRef) -> LeaseOutcome:
        """What ``op`` with a stale lease answers: STALE, but a Heartbeat of the lease a
        CancelJob cancelled its job under says CANCEL_REQUESTED (stop the handler)."""
        m = self.jobs[ref.job_id]
        cancelled_under = m.state is JobState.CANCELLED and m.cancelled_lease_id == ref.lease_id
        return LeaseOutcome.CANCEL_REQUESTED if op == "heartbeat" and cancelled_under else LeaseOutcome.STALE

    def replay_refs(self) -> list[LeaseRef]:
        return [r for r in self.refs if self.is_settler(r)]

    # ------------------------------------------------------------------ rules

    def add_jobs(self, params: list[tuple[str, int, int, int]]) -> None:
        specs = [
            spec(queue, max_attempts=max_attempts, run_at=self.now + delay if delay else None, priority=priority)
            for queue, max_attempts, delay, priority in params
        ]
        results = write(self.store, lambda: self.store.enqueue(specs, self.now, new_ids(len(specs))))
        assert len(results) == len(params)
        for res, (queue, max_attempts, delay, priority) in zip(results, params, strict=True):
            assert not res.duplicate and res.job_id not in self.jobs
            assert (res.queue, res.run_at) == (queue, self.now + delay)
            self.jobs[res.job_id] = Model(len(self.jobs), queue, priority, max_attempts, self.now + delay)

    @initialize(params=st.lists(JOB_PARAMS, min_size=1, max_size=5), how=CLAIM)
    def start_with_some_jobs_and_leases(
        self, params: list[tuple[str, int, int, int]], how: tuple[tuple[str, ...], int, int]
    ) -> None:
        self.add_jobs(params)
        self.claim(how)

    @rule(params=st.lists(JOB_PARAMS, min_size=1, max_size=2))
    def enqueue(self, params: list[tuple[str, int, int, int]]) -> None:
        self.add_jobs(params)

    def tokens(self, queue: str) -> float:
        jobs, period, tokens, at = self.buckets[queue]
        return float(min(jobs, tokens + max(0, self.now - at) * jobs / period))

    def key_tokens(self, queue: str, key: str) -> float:
        jobs, period = self.key_rates[queue]
        if (queue, key) not in self.key_buckets:
            return float(jobs)
        tokens, at = self.key_buckets[(queue, key)]
        return float(min(jobs, tokens + max(0, self.now - at) * jobs / period))

    def key_blocks(self, m: Model, running: Counter[tuple[str, str]]) -> bool:
        return m.ckey is not None and running[(m.queue, m.ckey)] >= m.climit

    @rule(how=CLAIM)
    def claim(self, how: tuple[tuple[str, ...], int, int]) -> None:
        queues, limit, lease_us = how
        if queues == ("g",):
            self.claim_grouped(limit, lease_us)
            return
        due = [
            (-m.priority, m.run_at, m.seq, job_id)
            for job_id, m in self.jobs.items()
            if m.queue in queues and m.state is JobState.PENDING and m.run_at <= self.now
        ]
        # In claim order, skipping jobs whose concurrency key has its limit running (counting
        # those taken by this claim) and jobs of a queue whose rate limit has no whole token
        # left: keys and buckets are per queue, so this global walk equals the store's
        # per-queue filtering merged.
        running = Counter(
            (m.queue, m.ckey) for m in self.jobs.values() if m.state is JobState.RUNNING and m.ckey is not None
        )
        quota = {q: int(self.tokens(q)) for q in queues if q in self.buckets}
        spent: Counter[str] = Counter()
        key_spent: Counter[tuple[str, str]] = Counter()
        expected: list[str] = []
        for *_, job_id in sorted(due):
            m = self.jobs[job_id]
            if self.key_blocks(m, running):
                event("claim: a concurrency key held a job back")
                continue
            rkey = (m.queue, m.rkey) if m.rkey is not None and m.queue in self.key_rates else None
            if rkey is not None and self.key_tokens(*rkey) - key_spent[rkey] < 1:
                event("claim: a per-key rate limit held a job back")
                continue
            if m.queue in quota and spent[m.queue] >= quota[m.queue]:
                event("claim: a rate limit held a job back")
                continue
            if m.ckey is not None:
                running[(m.queue, m.ckey)] += 1
            if rkey is not None:
                key_spent[rkey] += 1
            spent[m.queue] += 1
            expected.append(job_id)
            if len(expected) == limit:
                break

        got = write(self.store, lambda: self.store.claim(list(queues), limit, "w", lease_us, self.now))

        assert [j.id for j in got] == expected
        if got:  # the store charges the buckets of the claim's rate-limited queues, and the keys it took
            for q in quota:
                self.buckets[q][2:] = [self.tokens(q) - spent[q], self.now]
            for rkey, n in key_spent.items():
                self.key_buckets[rkey] = [self.key_tokens(*rkey) - n, self.now]
        self.took(got, lease_us)

    def claim_grouped(self, limit: int, lease_us: int) -> None:
        """A claim from the queue with fair groups. Which group goes next is the store's
        turn order (tested on its own in test_store's fairness tests and the property
        below); here: only ready jobs, in order within each group (a job passed over is
        held by its key), key limits kept, and the claim stops early only when nothing
        more may be taken."""
        got = write(self.store, lambda: self.store.claim(["g"], limit, "w", lease_us, self.now))
        taken = {j.id for j in got}
        assert len(taken) == len(got) <= limit
        running = Counter(
            (m.queue, m.ckey) for m in self.jobs.values() if m.state is JobState.RUNNING and m.ckey is not None
        )
        for j in got:
            m = self.jobs[j.id]
            assert m.queue == "g" and m.state is JobState.PENDING and m.run_at <= self.now and j.group == m.group
            if m.ckey is not None:
                running[(m.queue, m.ckey)] += 1
                assert running[(m.queue, m.ckey)] <= m.climit
        ready = sorted(
            (m.group, -m.priority, m.run_at, m.seq, job_id) for job_id, m in self.jobs.items()
            if m.queue == "g" and m.state is JobState.PENDING and m.run_at <= self.now
        )
        for group, *_, job_id in ready:
            if job_id in taken:
                continue
            m = self.jobs[job_id]
            later_taken = any(
                g == group and jid in taken and (-self.jobs[jid].priority, self.jobs[jid].run_at, self.jobs[jid].seq)
                > (-m.priority, m.run_at, m.seq) for g, *_, jid in ready
            )
            if later_taken or len(got) < limit:  # passed over, or left while there was room
                assert self.key_blocks(m, running), (job_id, m)
                event("claim g: a key held a grouped job back")
        if len({self.jobs[j].group for j in taken}) > 1:
            event("claim g: several groups in one claim")
        self.took(got, lease_us)

    def took(self, got: list[Job], lease_us: int) -> None:
        for job in got:
            m = self.jobs[job.id]
            assert job.lease_id is not None
            m.state, m.attempts = JobState.RUNNING, m.attempts + 1
            m.lease_id, m.lease_expires_at, m.lease_us = job.lease_id, self.now + lease_us, lease_us
            m.settled_lease_id = None
            assert (job.state, job.attempts, job.lease_expires_at) == (m.state, m.attempts, m.lease_expires_at)
            self.refs.append(LeaseRef(job.id, job.lease_id))

    @rule(g=st.tuples(st.sampled_from(["t1", "t2", "t3"]), st.integers(1, 3), st.sampled_from([None, 1, 3])))
    def enqueue_grouped(self, g: tuple[str, int, int | None]) -> None:
        group, n, weight = g
        if weight is not None:
            write(self.store, lambda: self.store.set_group_weight("g", group, weight, self.now))
        specs = [JobSpec("g", b"g", None, 2, group=group) for _ in range(n)]
        for res in write(self.store, lambda: self.store.enqueue(specs, self.now, new_ids(n))):
            self.jobs[res.job_id] = Model(len(self.jobs), "g", 0, 2, self.now, group=group)

    @rule(r=st.tuples(st.sampled_from(["a", "b"]), st.sampled_from([1, 1, 2, 0]), st.sampled_from([SECOND, 2 * SECOND]),
                      st.integers(0, 3)))
    def set_key_rate_limit(self, r: tuple[str, int, int, int]) -> None:
        """SetRateLimit per value of header "k", then ``n`` jobs of key "x" (a producer's burst)."""
        queue, jobs, period, n = r
        write(self.store, lambda: self.store.set_rate_limit(queue, jobs, period if jobs else 0, self.now, "k"))
        self.key_buckets = {k: v for k, v in self.key_buckets.items() if k[0] != queue}  # all full again
        if jobs:
            self.key_rates[queue] = (jobs, period)
        else:
            self.key_rates.pop(queue, None)
        if n:
            self.enqueue_rate_keyed((queue, "x", n))

    @rule(k=st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["x", "y"]), st.integers(1, 3)))
    def enqueue_rate_keyed(self, k: tuple[str, str, int]) -> None:
        queue, key, n = k
        specs = [JobSpec(queue, b"r", None, 2, headers={"k": key}) for _ in range(n)]
        for res in write(self.store, lambda: self.store.enqueue(specs, self.now, new_ids(n))):
            self.jobs[res.job_id] = Model(len(self.jobs), queue, 0, 2, self.now, rkey=key)

    @rule()
    def prune_groups(self) -> None:
        """What maintenance does: idle groups with the default weight are forgotten."""
        if write(self.store, lambda: self.store.prune_groups(10)):
            event("groups pruned")

    @rule(r=st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 2), st.sampled_from([SECOND, 3 * SECOND])))
    def set_rate_limit(self, r: tuple[str, int, int]) -> None:
        queue, jobs, period = r
        write(self.store, lambda: self.store.set_rate_limit(queue, jobs, period if jobs else 0, self.now))
        if jobs:
            self.buckets[queue] = [jobs, period, jobs, self.now]
        else:
            self.buckets.pop(queue, None)

    @precondition(lambda self: self.live_refs())
    @rule(data=st.data())
    def settle_live(self, data: st.DataObject) -> None:
        ref = data.draw(st.sampled_from(self.live_refs()), label="live lease")
        op = data.draw(st.sampled_from(["ack", "nack", "heartbeat"]), label="op")
        m = self.jobs[ref.job_id]
        s = self.store
        if op == "ack":
            [settled] = write(s, lambda: s.ack([(ref, b"ok")], self.now))
            assert (settled.outcome, settled.state) == (LeaseOutcome.OK, JobState.COMPLETED)
            m.state = JobState.COMPLETED
            m.settled_lease_id = ref.lease_id
            m.drop_lease()
        elif op == "nack":
            delay = data.draw(st.sampled_from([0, SECOND, 3 * SECOND]), label="retry delay")
            terminal = data.draw(st.booleans(), label="terminal")
            [settled] = write(s, lambda: s.nack([(ref, "err", delay, terminal)], BACKOFF, self.now))
            assert settled.outcome is LeaseOutcome.OK
            if terminal or m.attempts >= m.max_attempts:
                m.state = JobState.FAILED
            else:
                m.state, m.run_at = JobState.PENDING, self.now + delay
                assert settled.run_at == m.run_at
            assert settled.state is m.state
            m.settled_lease_id = ref.lease_id
            m.drop_lease()
        else:
            extend_by = data.draw(st.sampled_from([None, SECOND, 4 * SECOND]), label="extend by")
            [(outcome, expires)] = write(s, lambda: s.heartbeat([ref], extend_by, self.now))
            assert m.lease_us is not None
            m.lease_expires_at = self.now + (extend_by if extend_by is not None else m.lease_us)
            assert (outcome, expires) == (LeaseOutcome.OK, m.lease_expires_at)

    @precondition(lambda self: self.stale_refs())
    @rule(
        data=st.data(),
        op=st.sampled_from(["ack", "nack", "nack_terminal", "heartbeat"]),
        prefer_unswept=st.booleans(),
    )
    def settle_stale(self, data: st.DataObject, op: str, prefer_unswept: bool) -> None:
        stale = self.stale_refs()
        # Leases that lapsed but that the sweep has not ended yet are the subtle case.
        unswept = [r for r in stale if self.jobs[r.job_id].lease_id == r.lease_id]
        ref = data.draw(st.sampled_from(unswept if prefer_unswept and unswept else stale), label="stale lease")
        event("stale lease: lapsed, not yet swept" if ref in unswept else "stale lease: ended or re-leased")
        before = rows(self.store)
        s = self.store
        if op == "ack":
            outcome = write(s, lambda: s.ack([(ref, b"late")], self.now))[0].outcome
        elif op == "nack":
            outcome = write(s, lambda: s.nack([(ref, "late", 0, False)], BACKOFF, self.now))[0].outcome
        elif op == "nack_terminal":
            outcome = write(s, lambda: s.nack([(ref, "late", None, True)], BACKOFF, self.now))[0].outcome
        else:
            outcome = write(s, lambda: s.heartbeat([ref], 3600 * SECOND, self.now))[0][0]
        assert outcome is self.stale_outcome(op, ref)
        assert rows(self.store) == before

    @rule(step=ADVANCE)
    def advance(self, step: tuple[int, bool]) -> None:
        """Time passes; half the time the expiry sweep runs right after, as in the server."""
        delta, sweep = step
        self.now += delta
        if sweep:
            self.expire_leases(limit=3)

    @rule(limit=st.integers(1, 3))
    def expire_leases(self, limit: int) -> None:
        lapsed = {
            job_id: m.lease_expires_at
            for job_id, m in self.jobs.items()
            if m.state is JobState.RUNNING and m.lease_expires_at is not None and m.lease_expires_at <= self.now
        }

        expired = write(self.store, lambda: self.store.expire_leases(self.now, limit))
        event(f"expired {min(len(expired), 1)}+ of which failed {min(sum(e.state.final for e in expired), 1)}+")

        chosen = [e.job_id for e in expired]
        assert len(set(chosen)) == len(chosen) == min(limit, len(lapsed))
        assert set(chosen) <= lapsed.keys()
        left = [t for job_id, t in lapsed.items() if job_id not in chosen]
        assert not left or max(lapsed[j] for j in chosen) <= min(left)  # earliest expiry first
        for e in expired:
            m = self.jobs[e.job_id]
            assert e.queue == m.queue
            if m.attempts >= m.max_attempts:
                m.state = JobState.FAILED
            else:
                m.state, m.run_at = JobState.PENDING, self.now
            assert (e.state, e.run_at) == (m.state, m.run_at)
            m.drop_lease()

    @precondition(lambda self: self.refs)
    @rule(data=st.data())
    def unclaim(self, data: st.DataObject) -> None:
        ref = data.draw(st.sampled_from(self.refs), label="lease")
        m = self.jobs[ref.job_id]
        current = m.state is JobState.RUNNING and m.lease_id == ref.lease_id
        before = rows(self.store)

        n = write(self.store, lambda: self.store.unclaim([(ref.job_id, ref.lease_id)], self.now))

        assert n == int(current)
        if current:
            m.state, m.attempts = JobState.PENDING, m.attempts - 1
            m.drop_lease()
        else:
            assert rows(self.store) == before

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), op=st.sampled_from(["cancel", "retry"]), unknown=st.sampled_from([False] * 9 + [True]))
    def cancel_or_retry(self, data: st.DataObject, op: str, unknown: bool) -> None:
        if unknown:
            job_id = "0190a6b2-1c3d-7e4f-8a9b-0c1d2e3f4a5b"
            before = rows(self.store)
            with pytest.raises(NotFound):
                write(self.store, lambda: getattr(self.store, op)(job_id, self.now))
            assert rows(self.store) == before
            return
        job_id = data.draw(st.sampled_from(list(self.jobs)), label="job")
        m = self.jobs[job_id]
        allowed = (JobState.PENDING, JobState.RUNNING) if op == "cancel" else (JobState.FAILED, JobState.CANCELLED)
        already = JobState.CANCELLED if op == "cancel" else JobState.PENDING
        if m.state is already:  # a retried CancelJob / RetryJob: the job, unchanged
            before = rows(self.store)
            result = write(self.store, lambda: getattr(self.store, op)(job_id, self.now))
            job = result[0] if op == "cancel" else result
            assert job.state is already
            if op == "cancel":
                assert result[1] is False
            assert rows(self.store) == before
            return
        if m.state not in allowed:
            before = rows(self.store)
            with pytest.raises(FailedPrecondition):
                write(self.store, lambda: getattr(self.store, op)(job_id, self.now))
            assert rows(self.store) == before
            return
        if op == "cancel":
            job, was_running = write(self.store, lambda: self.store.cancel(job_id, self.now))
            assert was_running == (m.state is JobState.RUNNING)
            assert (job.state, job.completed_at) == (JobState.CANCELLED, self.now)
            assert job.cancel_requested == (m.state is JobState.RUNNING)
            m.cancelled_lease_id = m.lease_id
            m.state = JobState.CANCELLED
            m.settled_lease_id = None
            m.drop_lease()
        else:
            job = write(self.store, lambda: self.store.retry(job_id, self.now))
            m.state, m.attempts, m.run_at = JobState.PENDING, 0, self.now
            m.settled_lease_id = m.cancelled_lease_id = None
            assert not job.cancel_requested
            assert (job.state, job.attempts, job.run_at) == (m.state, m.attempts, m.run_at)

    @rule(k=st.tuples(st.sampled_from(QUEUES), st.sampled_from(["c1", "c2"]), st.integers(1, 2)))
    def enqueue_keyed(self, k: tuple[str, str, int]) -> None:
        queue, key, limit = k
        job = JobSpec(queue, b"k", None, 2, concurrency_key=key, concurrency_limit=limit)
        (res,) = write(self.store, lambda: self.store.enqueue([job], self.now, new_ids(1)))
        assert not res.duplicate
        self.jobs[res.job_id] = Model(len(self.jobs), queue, 0, 2, self.now, ckey=key, climit=limit)

    @rule(u=st.tuples(st.sampled_from(QUEUES), st.sampled_from(["k1", "k2"]), st.booleans()))
    def enqueue_unique(self, u: tuple[str, str, bool]) -> None:
        queue, key, running_blocks = u
        blocking = (JobState.PENDING, JobState.RUNNING) if running_blocks else (JobState.PENDING,)
        holders = sorted(
            (m.seq, job_id) for job_id, m in self.jobs.items()
            if m.queue == queue and m.unique_key == key and m.state in blocking
        )
        job = JobSpec(queue, b"u", None, 2, unique_key=key, unique_running=running_blocks)
        before = rows(self.store)
        (res,) = write(self.store, lambda: self.store.enqueue([job], self.now, new_ids(1)))
        if holders:
            event("unique: duplicate")
            assert (res.job_id, res.duplicate) == (holders[0][1], True)
            assert rows(self.store) == before
            return
        assert not res.duplicate and res.job_id not in self.jobs
        self.jobs[res.job_id] = Model(len(self.jobs), queue, 0, 2, self.now, unique_key=key)

    @rule(
        op=st.sampled_from(["cancel", "retry"]), queue=st.sampled_from(QUEUES), first=st.booleans(),
        limit=st.integers(1, 3),
    )
    def bulk(self, op: str, queue: str, first: bool, limit: int) -> None:
        states = (JobState.PENDING, JobState.RUNNING) if op == "cancel" else (JobState.FAILED, JobState.CANCELLED)
        state = states[0] if first else states[1]
        matching = [job_id for job_id, m in sorted(self.jobs.items(), key=lambda kv: kv[1].seq)
                    if m.queue == queue and m.state is state]
        sel = Selection(queue, state, None, None)
        method = self.store.cancel_many if op == "cancel" else self.store.retry_many
        result = write(self.store, lambda: method(sel, limit, self.now))
        assert [j.id for j in result.jobs] == matching[:limit]
        assert result.more == (len(matching) > limit)
        if result.jobs:
            event(f"bulk {op}: {len(result.jobs)}")
        for job_id in matching[:limit]:
            m = self.jobs[job_id]
            if op == "cancel":
                assert (job_id in result.ended) == (m.state is JobState.RUNNING)
                m.cancelled_lease_id = m.lease_id
                m.state = JobState.CANCELLED
                m.drop_lease()
            else:
                m.state, m.attempts, m.run_at = JobState.PENDING, 0, self.now
                m.cancelled_lease_id = None
            m.settled_lease_id = None

    # ------------------------------------------------------------------ invariants

    def stored(self) -> dict[str, tuple[object, ...]]:
        return {
            str(r[0]): tuple(r[1:])
            for r in self.store.conn.execute(
                "SELECT id, queue_name, priority, max_attempts, status, attempts, run_at,"
                " lease_id, lease_expires_at, lease_us, completed_at IS NOT NULL, settled_lease_id FROM jobs"
            )
        }

    @invariant()
    def store_states_equal_the_model(self) -> None:
        expected = {
            job_id: (
                m.queue, m.priority, m.max_attempts, m.state.value, m.attempts, m.run_at,
                m.lease_id, m.lease_expires_at, m.lease_us, int(m.state.final), m.settled_lease_id,
            )
            for job_id, m in self.jobs.items()
        }
        assert self.stored() == expected

    @invariant()
    def running_jobs_hold_exactly_the_lease_the_model_issued(self) -> None:
        for job_id, row in self.stored().items():
            m = self.jobs[job_id]
            lease_id = row[6]
            if row[3] == JobState.RUNNING.value:
                assert m.state is JobState.RUNNING and m.lease_id is not None and lease_id == m.lease_id
                assert LeaseRef(job_id, m.lease_id) in self.refs
            else:
                assert lease_id is None and m.lease_id is None

    @invariant()
    def every_stale_lease_is_refused_and_changes_nothing(self) -> None:
        """Try Ack, Nack and Heartbeat with every stale lease (in a transaction rolled back
        afterwards, though nothing may change anyway)."""
        stale = self.stale_refs()
        if not stale:
            return
        s = self.store
        before = rows(s)
        s.begin()
        try:
            acked = s.ack([(r, b"late") for r in stale], self.now)
            nacked = s.nack([(r, "late", 0, False) for r in stale], BACKOFF, self.now)
            failed = s.nack([(r, "late", None, True) for r in stale], BACKOFF, self.now)
            beat = s.heartbeat(stale, 3600 * SECOND, self.now)
            after = rows(s)
        finally:
            s.rollback()
        assert {x.outcome for x in acked + nacked + failed} == {LeaseOutcome.STALE}
        # A lease CancelJob cancelled its job under hears of it (stop the handler); the rest are STALE.
        expected = [self.stale_outcome("heartbeat", r) for r in stale]
        assert [outcome for outcome, _ in beat] == expected
        if LeaseOutcome.CANCEL_REQUESTED in expected:
            event("heartbeat: cancel requested")
        assert after == before

    @invariant()
    def every_retried_settle_is_an_ok_replay_and_changes_nothing(self) -> None:
        """A retried Ack (job COMPLETED) or Nack (job PENDING/FAILED) with the token that
        settled it is OK and a replay; the other kind, and Heartbeat, are STALE."""
        refs = self.replay_refs()
        if not refs:
            return
        s = self.store
        before = rows(s)
        s.begin()
        try:
            acked = s.ack([(r, b"again") for r in refs], self.now)
            nacked = s.nack([(r, "again", None, False) for r in refs], BACKOFF, self.now)
            beat = s.heartbeat(refs, 3600 * SECOND, self.now)
            after = rows(s)
        finally:
            s.rollback()
        for r, a, n in zip(refs, acked, nacked, strict=True):
            state = self.jobs[r.job_id].state
            by_ack = state is JobState.COMPLETED
            assert state in (JobState.COMPLETED, JobState.PENDING, JobState.FAILED)
            assert (a.outcome, a.replay) == ((LeaseOutcome.OK, True) if by_ack else (LeaseOutcome.STALE, False))
            assert (n.outcome, n.replay) == ((LeaseOutcome.STALE, False) if by_ack else (LeaseOutcome.OK, True))
            assert a.job_id is None or not a.replay
            assert n.job_id is None or not n.replay
        assert {outcome for outcome, _ in beat} == {LeaseOutcome.STALE}
        assert after == before

    @invariant()
    def attempts_never_exceed_max_attempts(self) -> None:
        for row in self.stored().values():
            attempts, max_attempts = row[4], row[2]
            assert isinstance(attempts, int) and isinstance(max_attempts, int)
            assert 0 <= attempts <= max_attempts

    @invariant()
    def queue_stats_agree_with_the_model(self) -> None:
        for stats in self.store.queue_stats(list(QUEUES), self.now):
            models = [m for m in self.jobs.values() if m.queue == stats.queue]
            by_state = Counter(m.state for m in models)
            ready = [m.run_at for m in models if m.state is JobState.PENDING and m.run_at <= self.now]
            assert (stats.pending, stats.scheduled) == (len(ready), by_state[JobState.PENDING] - len(ready))
            assert (stats.running, stats.completed, stats.failed, stats.cancelled) == (
                by_state[JobState.RUNNING], by_state[JobState.COMPLETED],
                by_state[JobState.FAILED], by_state[JobState.CANCELLED],
            )
            assert stats.oldest_ready_run_at == (min(ready) if ready else None)
            if stats.queue == "g" and any(m.group for m in models):
                assert stats.groups == len({m.group for m in models if m.state is JobState.PENDING})


TestStoreStateMachine = StoreMachine.TestCase
TestStoreStateMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 30), st.integers(1, 4)), min_size=2, max_size=5),
    batch=st.integers(1, 5),
    late=st.integers(0, 4),
)
def test_groups_get_turns_in_proportion_to_their_weights(
    sizes: list[tuple[int, int]], batch: int, late: int
) -> None:
    """Stride scheduling's bound: while two groups both have jobs waiting, their leases per
    unit of weight never differ by more than one turn of each (whatever the claim sizes);
    a group that joins later starts level with the others, not behind."""
    tmp = tempfile.mkdtemp(prefix="edgeq-fair-")
    store = open_store(os.path.join(tmp, "f.db"))
    try:
        weight = {f"g{i}": w for i, (_, w) in enumerate(sizes)}
        left = {f"g{i}": n for i, (n, _) in enumerate(sizes)}
        joiner = f"g{len(sizes) - 1}"  # enqueued after `late` leases
        for g, n in left.items():
            write(store, lambda g=g: store.set_group_weight("f", g, weight[g], NOW))  # type: ignore[misc]
            if g != joiner or not late:
                write(store, lambda g=g, n=n: store.enqueue(  # type: ignore[misc]
                    [JobSpec("f", b"x", None, 1, group=g) for _ in range(n)], NOW, new_ids(n)))
        served: Counter[str] = Counter()
        joined = not late
        while True:
            others_done = all(n == 0 for g, n in left.items() if g != joiner)
            if not joined and (sum(served.values()) >= late or others_done):
                write(store, lambda: store.enqueue(
                    [JobSpec("f", b"x", None, 1, group=joiner) for _ in range(left[joiner])], NOW, new_ids(50)))
                joined, base = True, Counter(served)
                served[joiner] = 0
            got = write(store, lambda: store.claim(["f"], batch, "w", 30 * SECOND, NOW))
            if not got:
                break
            write(store, lambda got=got: store.ack([(LeaseRef(j.id, j.lease_id or ""), b"") for j in got], NOW))  # type: ignore[misc]
            for j in got:
                served[j.group] += 1
                left[j.group] -= 1
            waiting = [g for g, n in left.items() if n > 0 and (joined or g != joiner)]
            for a in waiting:
                for b in waiting:
                    share_a = served[a] / weight[a]
                    share_b = served[b] / weight[b]
                    if late and joined and joiner in (a, b):  # the joiner counts from when it came
                        share_a -= (base[a] / weight[a]) if a != joiner else 0
                        share_b -= (base[b] / weight[b]) if b != joiner else 0
                        if a != joiner and b != joiner:
                            continue
                        slack = 1.0 / weight[a] + 1.0 / weight[b] + batch
                    else:
                        slack = 1.0 / weight[a] + 1.0 / weight[b] + 1e-9
                    assert share_a - share_b <= slack, (a, b, served, weight)
        assert sum(left.values()) == 0  # everything was leased
    finally:
        store.conn.close()
        shutil.rmtree(tmp, ignore_errors=True)
