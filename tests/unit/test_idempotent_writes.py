"""Retried writes get the same outcome and change nothing more. Under replicated
durability a write can commit while its reply is lost (or turned into an error), and the
client retries the same request: Ack/Nack with the same token, CancelJob, RetryJob. Store
rules are driven with the fixed clock; the writer part checks that a committed batch is
always reported committed (a failing txid read after COMMIT must not make callers retry)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import apsw
import pytest
from support.factories import NOW, SECOND, add, claim_one, get, new_ids, ref, rows, spec, write

from edgeq_server import db, ids
from edgeq_server.clock import ManualClock
from edgeq_server.errors import CommitUnconfirmed, FailedPrecondition
from edgeq_server.models import Backoff, Job, JobState, LeaseOutcome
from edgeq_server.store import Settled, Store
from edgeq_server.tokens import LeaseRef
from edgeq_server.writer import Writer

BACKOFF = Backoff(base_us=SECOND, max_us=60 * SECOND)


def ack(store: Store, r: LeaseRef, now: int = NOW, result: bytes = b"") -> Settled:
    return write(store, lambda: store.ack([(r, result)], now))[0]


def nack(
    store: Store, r: LeaseRef, now: int = NOW, *, delay: int | None = 0, terminal: bool = False, message: str = "boom"
) -> Settled:
    return write(store, lambda: store.nack([(r, message, delay, terminal)], BACKOFF, now))[0]


def heartbeat(store: Store, r: LeaseRef, now: int = NOW) -> LeaseOutcome:
    return write(store, lambda: store.heartbeat([r], 3600 * SECOND, now))[0][0]


def cancel(store: Store, job_id: str, now: int = NOW) -> tuple[Job, bool]:
    return write(store, lambda: store.cancel(job_id, now))


def retry(store: Store, job_id: str, now: int = NOW) -> Job:
    return write(store, lambda: store.retry(job_id, now))


def settled_lease_id(store: Store, job_id: str) -> str | None:
    v: Any = store.conn.execute("SELECT settled_lease_id FROM jobs WHERE id = ?", (job_id,)).get
    return None if v is None else str(v)


# ===================================================================== Ack


def test_a_retried_ack_is_ok_again_and_changes_nothing(store: Store) -> None:
    add(store)
    add(store, "bystander")
    job = claim_one(store)
    first = ack(store, ref(job), NOW + 1, result=b"42")
    assert first == Settled(LeaseOutcome.OK, job.id, "q", JobState.COMPLETED)
    assert settled_lease_id(store, job.id) == job.lease_id
    before = rows(store)

    again = ack(store, ref(job), NOW + 2, result=b"other")

    # Same outcome; no job_id, so the dispatcher returns no credit a second time.
    assert again == Settled(LeaseOutcome.OK, None, "q", JobState.COMPLETED, replay=True)
    assert rows(store) == before
    after = get(store, job.id)
    assert (after.state, after.result, after.completed_at) == (JobState.COMPLETED, b"42", NOW + 1)


def test_a_retried_ack_long_after_the_lease_would_have_expired_is_still_ok(store: Store) -> None:
    add(store)
    job = claim_one(store, lease_us=10 * SECOND)
    ack(store, ref(job), NOW + 1)
    before = rows(store)

    assert ack(store, ref(job), NOW + 3600 * SECOND).replay
    assert write(store, lambda: store.expire_leases(NOW + 3600 * SECOND, 10)) == []
    assert rows(store) == before


def test_the_same_token_twice_in_one_ack_batch_settles_once(store: Store) -> None:
    add(store)
    job = claim_one(store)

    out = write(store, lambda: store.ack([(ref(job), b"a"), (ref(job), b"b")], NOW))

    assert [(s.outcome, s.job_id, s.replay) for s in out] == [
        (LeaseOutcome.OK, job.id, False),
        (LeaseOutcome.OK, None, True),
    ]
    assert get(store, job.id).result == b"a"


def test_a_nack_with_a_token_that_was_acked_is_stale(store: Store) -> None:
    add(store)
    job = claim_one(store)
    ack(store, ref(job))
    before = rows(store)

    assert nack(store, ref(job)).outcome is LeaseOutcome.STALE
    assert nack(store, ref(job), terminal=True).outcome is LeaseOutcome.STALE
    assert heartbeat(store, ref(job)) is LeaseOutcome.STALE
    assert rows(store) == before


# ===================================================================== Nack


def test_a_retried_nack_into_a_retry_is_ok_again_with_no_new_attempt_or_backoff(store: Store) -> None:
    add(store)
    job = claim_one(store)
    first = nack(store, ref(job), NOW + 1, delay=None, message="flaky")  # jittered backoff
    assert (first.outcome, first.state, first.replay) == (LeaseOutcome.OK, JobState.PENDING, False)
    assert first.run_at is not None
    before = rows(store)

    # Retried after the job became due again, even: still waiting to be leased, so a replay.
    again = nack(store, ref(job), first.run_at + SECOND, delay=None, message="flaky")

    assert again == Settled(LeaseOutcome.OK, None, "q", JobState.PENDING, first.run_at, replay=True)
    assert rows(store) == before
    after = get(store, job.id)
    assert (after.state, after.attempts, after.run_at, after.error_message) == (
        JobState.PENDING, 1, first.run_at, "flaky",
    )


@pytest.mark.parametrize("terminal", [True, False])
def test_a_retried_nack_that_failed_the_job_is_ok_again(store: Store, terminal: bool) -> None:
    add(store, max_attempts=5 if terminal else 1)
    job = claim_one(store)
    first = nack(store, ref(job), NOW + 1, terminal=terminal, message="poison")
    assert first == Settled(LeaseOutcome.OK, job.id, "q", JobState.FAILED)
    before = rows(store)

    again = nack(store, ref(job), NOW + 2, terminal=terminal, message="poison")

    assert again == Settled(LeaseOutcome.OK, None, "q", JobState.FAILED, replay=True)
    assert rows(store) == before
    assert get(store, job.id).completed_at == NOW + 1


def test_an_ack_with_a_token_that_was_nacked_is_stale(store: Store) -> None:
    add(store)
    job = claim_one(store)
    nack(store, ref(job), delay=SECOND)
    before = rows(store)

    assert ack(store, ref(job)).outcome is LeaseOutcome.STALE
    assert heartbeat(store, ref(job)) is LeaseOutcome.STALE
    assert rows(store) == before


# ===================================================================== still STALE


def test_a_retried_nack_after_another_worker_leased_the_job_is_stale(store: Store) -> None:
    add(store)
    job = claim_one(store, worker="w1")
    nack(store, ref(job), NOW + 1, delay=0)
    other = claim_one(store, now=NOW + 2, worker="w2")
    assert other.id == job.id
    assert settled_lease_id(store, job.id) is None  # leasing forgets who settled before
    before = rows(store)

    assert nack(store, ref(job), NOW + 3).outcome is LeaseOutcome.STALE
    assert nack(store, ref(job), NOW + 3, terminal=True).outcome is LeaseOutcome.STALE
    assert ack(store, ref(job), NOW + 3).outcome is LeaseOutcome.STALE
    assert rows(store) == before
    # ... and once the other worker settled it, the first token is still not its settler.
    assert ack(store, ref(other), NOW + 4).outcome is LeaseOutcome.OK
    assert nack(store, ref(job), NOW + 5).outcome is LeaseOutcome.STALE
    assert ack(store, ref(job), NOW + 5).outcome is LeaseOutcome.STALE
    assert ack(store, ref(other), NOW + 5).replay


def test_a_token_whose_lease_expired_is_stale_not_a_replay(store: Store) -> None:
    add(store)
    job = claim_one(store, lease_us=10 * SECOND)
    assert [e.job_id for e in write(store, lambda: store.expire_leases(NOW + 10 * SECOND, 10))] == [job.id]
    assert settled_lease_id(store, job.id) is None  # expiry settles nothing
    before = rows(store)

    assert ack(store, ref(job), NOW + 11 * SECOND).outcome is LeaseOutcome.STALE
    assert nack(store, ref(job), NOW + 11 * SECOND).outcome is LeaseOutcome.STALE
    assert rows(store) == before


def test_a_retried_nack_after_the_job_was_cancelled_is_stale(store: Store) -> None:
    add(store)
    job = claim_one(store)
    nack(store, ref(job), NOW + 1, delay=60 * SECOND)
    cancel(store, job.id, NOW + 2)
    before = rows(store)

    assert nack(store, ref(job), NOW + 3).outcome is LeaseOutcome.STALE
    assert rows(store) == before


def test_a_retried_nack_after_the_failed_job_was_redriven_is_stale(store: Store) -> None:
    add(store)
    job = claim_one(store)
    nack(store, ref(job), NOW + 1, terminal=True)
    retry(store, job.id, NOW + 2)
    assert settled_lease_id(store, job.id) is None
    before = rows(store)

    assert nack(store, ref(job), NOW + 3, terminal=True).outcome is LeaseOutcome.STALE
    assert rows(store) == before


def test_a_lease_that_was_never_settled_is_stale_after_a_cancel(store: Store) -> None:
    add(store)
    job = claim_one(store)
    cancel(store, job.id, NOW + 1)
    before = rows(store)
    assert ack(store, ref(job), NOW + 2).outcome is LeaseOutcome.STALE
    assert nack(store, ref(job), NOW + 2).outcome is LeaseOutcome.STALE
    assert rows(store) == before


# ===================================================================== CancelJob, RetryJob


@pytest.mark.parametrize("running", [False, True])
def test_a_retried_cancel_returns_the_cancelled_job_unchanged(store: Store, running: bool) -> None:
    job_id = add(store)
    if running:
        claim_one(store)
    first, was_running = cancel(store, job_id, NOW + 1)
    assert (first.state, was_running) == (JobState.CANCELLED, running)
    before = rows(store)

    again, was_running_again = cancel(store, job_id, NOW + 2)

    assert again == first
    assert not was_running_again  # no second credit for the dispatcher
    assert rows(store) == before


def test_cancel_of_a_completed_or_failed_job_is_still_a_failed_precondition(store: Store) -> None:
    done, failed = add(store), add(store, max_attempts=1)
    ack(store, ref(claim_one(store)))
    nack(store, ref(claim_one(store)))
    assert (get(store, done).state, get(store, failed).state) == (JobState.COMPLETED, JobState.FAILED)
    before = rows(store)
    for job_id in (done, failed):
        with pytest.raises(FailedPrecondition):
            cancel(store, job_id)
    assert rows(store) == before


def test_a_retried_retryjob_returns_the_pending_job_unchanged(store: Store) -> None:
    job_id = add(store)
    nack(store, ref(claim_one(store)), terminal=True)
    first = retry(store, job_id, NOW + 1)
    assert (first.state, first.attempts, first.run_at) == (JobState.PENDING, 0, NOW + 1)
    before = rows(store)

    again = retry(store, job_id, NOW + 2)

    assert again == first
    assert rows(store) == before


def test_retry_of_a_job_never_failed_is_a_no_op_too(store: Store) -> None:
    job_id = add(store, run_at=NOW + 60 * SECOND)
    before = rows(store)
    assert retry(store, job_id, NOW + 1).run_at == NOW + 60 * SECOND
    assert rows(store) == before


def test_retry_of_a_running_or_completed_job_is_still_a_failed_precondition(store: Store) -> None:
    done = add(store)
    ack(store, ref(claim_one(store)))
    running = add(store)
    claim_one(store)
    before = rows(store)
    for job_id in (done, running):
        with pytest.raises(FailedPrecondition):
            retry(store, job_id)
    assert rows(store) == before


# ===================================================================== schema


def test_settled_lease_id_is_never_set_on_a_running_job(store: Store) -> None:
    add(store)
    job = claim_one(store)
    with pytest.raises(apsw.ConstraintError):
        store.conn.execute("UPDATE jobs SET settled_lease_id = lease_id WHERE id = ?", (job.id,))


def test_a_version_1_database_migrates_and_its_settled_jobs_stay_stale(db_path: str) -> None:
    conn = db.connect(db_path, writer=True)
    conn.execute("BEGIN")
    conn.execute(db.MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    # Written the version-1 way: one job acked before the column existed, one running.
    insert = (
        "INSERT INTO jobs (id, queue_name, payload, status, attempts, max_attempts, run_at, created_at,"
        " completed_at, lease_id, lease_expires_at, lease_us) VALUES (?, 'q', x'00', ?, 1, 3, ?, ?, ?, ?, ?, ?)"
    )
    done, running = ids.uuid7(), ids.uuid7()
    conn.execute(insert, (done, "completed", NOW, NOW, NOW, None, None, None))
    conn.execute(insert, (running, "running", NOW, NOW, None, "00112233aabbccdd", NOW + 30 * SECOND, 30 * SECOND))
    conn.execute("COMMIT")

    assert db.migrate(conn) == len(db.MIGRATIONS) >= 2
    store = Store(conn)
    try:
        assert settled_lease_id(store, done) is None
        assert ack(store, LeaseRef(done, "ffeeddccbbaa9988")).outcome is LeaseOutcome.STALE
        live = LeaseRef(running, "00112233aabbccdd")
        assert ack(store, live).outcome is LeaseOutcome.OK
        assert ack(store, live).replay
    finally:
        conn.close()


# ===================================================================== writer: commit reported as committed


def _enqueue_op(store: Store, now: int) -> str:
    return store.enqueue([spec()], now, new_ids(1))[0].job_id


async def test_a_commit_litefs_cannot_confirm_is_reported_unconfirmed_never_ok(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """LiteFS: the txid comes from the -pos file after COMMIT. When LiteFS loses the lease
    mid-commit it rolls the transaction back and exits (code 99): the -pos read then fails.
    Found by the fault suite: answering OK with the last known txid acknowledged a write no
    node kept. Neither OK (maybe lost) nor a plain error (maybe written): CommitUnconfirmed
    (ABORTED, COMMITTED_NOT_REPLICATED), which clients retry with the same key."""
    path = str(tmp_path / "t.db")
    position = [7]
    failures = [0]

    def txid_after_commit() -> int:
        if failures[0] > 0:
            failures[0] -= 1
            raise OSError("-pos unreadable")
        return position[0]

    writer = Writer(path, ManualClock(NOW), txid_after_commit=txid_after_commit)
    writer.start()
    try:
        position[0] = 8
        first, txid1 = await writer.submit(_enqueue_op)
        assert txid1 == 8

        position[0] = 9
        failures[0] = 1  # fails once: read again at once
        second, txid2 = await writer.submit(_enqueue_op)
        assert txid2 == 9

        position[0] = 10
        failures[0] = 2  # fails twice: unconfirmed
        with pytest.raises(CommitUnconfirmed) as err:
            await writer.submit(_enqueue_op)
        assert err.value.reason == "COMMITTED_NOT_REPLICATED"
        assert writer.txid == 9
        assert any("did not confirm" in r.getMessage() for r in caplog.records)

        # A write whose position did not move was not recorded by LiteFS either.
        position[0] = 9
        with pytest.raises(CommitUnconfirmed):
            await writer.submit(_enqueue_op)

        position[0] = 11
        fourth, txid4 = await writer.submit(_enqueue_op)
        assert txid4 == 11
    finally:
        writer.close()
    reader = Store(db.connect(path))
    try:
        assert all(reader.get_job(j) is not None for j in (first, second, fourth))
    finally:
        reader.conn.close()


async def test_an_unconfirmed_grouped_batch_fails_every_operation_alike(tmp_path: Path) -> None:
    path = str(tmp_path / "g.db")
    fail = [False]

    def txid_after_commit() -> int:
        if fail[0]:
            raise OSError("-pos unreadable")
        return 5

    writer = Writer(path, ManualClock(NOW), txid_after_commit=txid_after_commit)
    writer.start()
    try:
        fail[0] = True
        results = await asyncio.gather(*(writer.submit(_enqueue_op) for _ in range(20)), return_exceptions=True)
    finally:
        writer.close()
    assert all(isinstance(r, CommitUnconfirmed) for r in results), results
