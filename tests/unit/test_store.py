"""The store contract, driven with a fixed clock: enqueue, claim ordering, lease fencing,
nack/backoff, lease expiry, cancel/retry/unclaim, retention, stats and listing, the
schema's CHECK constraints, migrations, and the group-commit writer."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import threading
from typing import Any

import apsw
import pytest
from support.factories import (
    NOW,
    SECOND,
    add,
    claim,
    claim_one,
    enqueue,
    get,
    new_ids,
    open_store,
    ref,
    rows,
    spec,
    write,
)

from edgeq_server import db, ids
from edgeq_server.clock import ManualClock
from edgeq_server.errors import FailedPrecondition, NotFound, Unavailable
from edgeq_server.models import AckItem, Backoff, Job, JobSpec, JobState, LeaseOutcome
from edgeq_server.store import Expired, Settled, Store
from edgeq_server.tokens import LeaseRef, TokenCodec
from edgeq_server.writer import Writer

NO_JITTER = Backoff(base_us=SECOND, max_us=60 * SECOND)


def ack(store: Store, r: LeaseRef | None, now: int = NOW, result: bytes = b"") -> Settled:
    return write(store, lambda: store.ack([(r, result)], now))[0]


def nack(
    store: Store,
    r: LeaseRef | None,
    now: int = NOW,
    *,
    message: str = "boom",
    delay: int | None = 0,
    terminal: bool = False,
    backoff: Backoff = NO_JITTER,
) -> Settled:
    return write(store, lambda: store.nack([(r, message, delay, terminal)], backoff, now))[0]


def heartbeat(store: Store, r: LeaseRef | None, now: int = NOW, extend_by: int | None = None) -> tuple[
    LeaseOutcome, int | None
]:
    return write(store, lambda: store.heartbeat([r], extend_by, now))[0]


def cancel(store: Store, job_id: str, now: int = NOW) -> tuple[Job, bool]:
    return write(store, lambda: store.cancel(job_id, now))


def retry(store: Store, job_id: str, now: int = NOW) -> Job:
    return write(store, lambda: store.retry(job_id, now))


def expire(store: Store, now: int, limit: int = 100) -> list[Expired]:
    return write(store, lambda: store.expire_leases(now, limit))


def set_paused(store: Store, queue: str, paused: bool, now: int = NOW) -> None:
    write(store, lambda: store.set_paused(queue, paused, now))


def completed_job(store: Store, queue: str = "q", now: int = NOW, **kw: Any) -> str:
    job_id = add(store, queue, now=now, **kw)
    job = claim_one(store, queue, now=now)
    assert job.id == job_id
    assert ack(store, ref(job), now).outcome is LeaseOutcome.OK
    return job_id


def failed_job(store: Store, queue: str = "q", now: int = NOW, **kw: Any) -> str:
    job_id = add(store, queue, now=now, **kw)
    job = claim_one(store, queue, now=now)
    assert job.id == job_id
    assert nack(store, ref(job), now, terminal=True).state is JobState.FAILED
    return job_id


def cancelled_job(store: Store, queue: str = "q", now: int = NOW, **kw: Any) -> str:
    job_id = add(store, queue, now=now, **kw)
    cancel(store, job_id, now)
    return job_id


def claimed_ids(store: Store, queues: tuple[str, ...] = ("q",), limit: int = 100, now: int = NOW) -> list[str]:
    return [j.id for j in claim(store, queues, limit, now=now)]


# ===================================================================== enqueue


def test_enqueue_returns_one_result_per_spec_in_request_order(store: Store) -> None:
    supplied = [ids.uuid7() for _ in range(3)]
    results = write(store, lambda: store.enqueue([spec("a"), spec("b"), spec("a", b"2")], NOW, iter(supplied)))

    assert [r.job_id for r in results] == supplied
    assert [r.queue for r in results] == ["a", "b", "a"]
    assert all(not r.duplicate and r.run_at == NOW for r in results)
    job = get(store, supplied[2])
    assert (job.queue, job.payload, job.state, job.attempts, job.max_attempts) == ("a", b"2", JobState.PENDING, 0, 3)
    assert (job.created_at, job.run_at, job.started_at, job.completed_at) == (NOW, NOW, None, None)
    assert (job.lease_id, job.lease_expires_at, job.worker_id, job.error_message, job.result) == (None,) * 5


def test_enqueue_repeat_of_idempotency_key_returns_first_job_as_duplicate(store: Store) -> None:
    first = enqueue(store, spec(payload=b"first", key="k"))[0]
    unused = ids.uuid7()
    again = write(
        store, lambda: store.enqueue([spec(payload=b"second", key="k", run_at=NOW + SECOND)], NOW + 5, iter([unused]))
    )[0]

    assert not first.duplicate
    assert (again.job_id, again.duplicate, again.run_at) == (first.job_id, True, NOW)
    assert get(store, first.job_id).payload == b"first"
    assert store.get_job(unused) is None
    assert len(store.list_jobs(None, None, 0, 100)) == 1


def test_enqueue_duplicate_key_within_one_batch_returns_the_batchs_first_id(store: Store) -> None:
    results = enqueue(store, spec(payload=b"1", key="k"), spec(payload=b"other"), spec(payload=b"2", key="k"))

    assert results[2].job_id == results[0].job_id
    assert [r.duplicate for r in results] == [False, False, True]
    assert results[1].job_id != results[0].job_id
    assert get(store, results[0].job_id).payload == b"1"
    assert len(store.list_jobs(None, None, 0, 100)) == 2


def test_enqueue_same_idempotency_key_on_another_queue_is_a_new_job(store: Store) -> None:
    a, b = enqueue(store, spec("a", key="k"), spec("b", key="k"))

    assert a.job_id != b.job_id
    assert not a.duplicate and not b.duplicate
    assert enqueue(store, spec("b", key="k"))[0].job_id == b.job_id


def test_a_generated_auto_key_is_stored_as_the_jobs_id_not_as_text(store: Store) -> None:
    """``auto-<UUID>`` (the SDKs' generated key) costs no key column or index entry: the job
    takes the UUID as its id and the key reads back the same."""
    uuid = ids.uuid7()
    first = enqueue(store, spec(key=f"auto-{uuid}"))[0]
    assert (first.job_id, first.duplicate) == (uuid, False)
    assert get(store, uuid).idempotency_key == f"auto-{uuid}"
    row = store.conn.execute("SELECT idempotency_key, auto_key FROM jobs WHERE id = ?", (uuid,)).fetchone()
    assert row == (None, 1)
    # A retry finds it by the id (in another batch, and twice within one), completed too.
    again = enqueue(store, spec(payload=b"retry", key=f"auto-{uuid}"), spec(key=f"auto-{uuid}"), now=NOW + 5)
    assert [(r.job_id, r.duplicate) for r in again] == [(uuid, True), (uuid, True)]
    assert store.job_id_by_key("q", f"auto-{uuid}") == uuid
    assert len(store.list_jobs(None, None, 0, 100)) == 1


def test_an_auto_key_keeps_the_semantics_of_any_key_when_its_uuid_cannot_be_the_id(store: Store) -> None:
    uuid, own_id = ids.uuid7(), ids.uuid7()
    # The same generated key on another queue is another job (keys are per queue).
    a, b = enqueue(store, spec("a", key=f"auto-{uuid}"), spec("b", key=f"auto-{uuid}"))
    assert a.job_id == uuid and b.job_id != uuid and not b.duplicate
    assert get(store, b.job_id).idempotency_key == f"auto-{uuid}"
    assert enqueue(store, spec("b", key=f"auto-{uuid}"))[0].job_id == b.job_id  # found by the key column
    assert store.job_id_by_key("b", f"auto-{uuid}") == b.job_id
    # A job that brings its own id (accepted at an edge) keeps it and stores the key as text.
    other = ids.uuid7()
    with_id = dataclasses.replace(spec("c", key=f"auto-{other}"), job_id=own_id)
    c = write(store, lambda: store.enqueue([with_id], NOW, iter([])))[0]
    assert c.job_id == own_id
    assert get(store, own_id).idempotency_key == f"auto-{other}"
    assert enqueue(store, spec("c", key=f"auto-{other}"))[0].job_id == own_id
    # Not a generated key (upper case, extra text): stored as given.
    odd = f"auto-{ids.uuid7().upper()}"
    d = enqueue(store, spec("d", key=odd))[0]
    assert d.job_id.lower() != odd[5:].lower() and get(store, d.job_id).idempotency_key == odd


def test_enqueue_key_is_still_taken_while_its_job_is_retained_in_a_final_state(store: Store) -> None:
    job_id = completed_job(store, key="k")
    again = enqueue(store, spec(key="k"), now=NOW + SECOND)[0]

    assert (again.job_id, again.duplicate) == (job_id, True)


def test_enqueue_headers_round_trip_and_empty_headers_read_back_empty(store: Store) -> None:
    headers = {"trace-id": "abc", "content-type": "application/json", "ünï": "cödé"}
    with_h, without = enqueue(store, spec(headers=headers), spec())

    assert get(store, with_h.job_id).headers == headers
    assert get(store, without.job_id).headers == {}
    assert claim(store, limit=2)[0].headers == headers


def test_enqueue_creates_the_queue_unpaused(store: Store) -> None:
    add(store, "fresh")
    [stats] = store.queue_stats(["fresh"], NOW)
    assert (stats.queue, stats.pending, stats.paused) == ("fresh", 1, False)


def test_job_with_future_run_at_is_not_claimable_until_due(store: Store) -> None:
    due = NOW + 10 * SECOND
    job_id = add(store, run_at=due)

    assert get(store, job_id).state is JobState.PENDING
    assert claim(store, now=NOW) == []
    assert claim(store, now=due - 1) == []
    assert [j.id for j in claim(store, now=due)] == [job_id]


# ===================================================================== claim


def test_claim_orders_by_priority_then_run_at_then_enqueue_order(store: Store) -> None:
    a, b, c, d, e, f = (
        r.job_id
        for r in enqueue(
            store,
            spec(payload=b"a", priority=0, run_at=NOW - 5),
            spec(payload=b"b", priority=5, run_at=NOW),
            spec(payload=b"c", priority=5, run_at=NOW - 1),
            spec(payload=b"d", priority=0, run_at=NOW - 5),
            spec(payload=b"e", priority=0, run_at=NOW - 10),
            spec(payload=b"f", priority=-3, run_at=NOW - 100),
        )
    )
    expected = [c, b, e, a, d, f]

    assert claimed_ids(store, limit=10) == expected


def test_claim_one_at_a_time_follows_the_same_order(store: Store) -> None:
    specs = [spec(payload=bytes([i]), priority=i % 3, run_at=NOW - (i * 7) % 5) for i in range(12)]
    order = [r.job_id for r in enqueue(store, *specs)]
    rank = {job_id: (-s.priority, s.run_at, i) for i, (job_id, s) in enumerate(zip(order, specs, strict=True))}

    got = [claim_one(store).id for _ in range(12)]

    assert got == sorted(order, key=rank.__getitem__)
    assert claim(store) == []


def test_claim_orders_across_several_queues_as_one_ordering(store: Store) -> None:
    q1_low_old = add(store, "q1", priority=0, run_at=NOW - 50)
    q1_high = add(store, "q1", priority=2)
    q2_low_older = add(store, "q2", priority=0, run_at=NOW - 60)
    q2_high_old = add(store, "q2", priority=2, run_at=NOW - 1)
    q3_ignored = add(store, "q3", priority=9)
    q1_low_same_run_at = add(store, "q1", priority=0, run_at=NOW - 60)

    assert claimed_ids(store, ("q1", "q2"), limit=10) == [
        q2_high_old,
        q1_high,
        q2_low_older,
        q1_low_same_run_at,
        q1_low_old,
    ]
    assert claimed_ids(store, ("q3",)) == [q3_ignored]


def test_claim_limit_takes_the_best_jobs_across_queues(store: Store) -> None:
    q1 = [add(store, "q1") for _ in range(3)]
    q2_high = add(store, "q2", priority=1)

    assert claimed_ids(store, ("q1", "q2"), limit=2) == [q2_high, q1[0]]
    assert claimed_ids(store, ("q1", "q2"), limit=1) == [q1[1]]
    assert claimed_ids(store, ("q2", "q1"), limit=5) == [q1[2]]


def test_claim_respects_limit(store: Store) -> None:
    for _ in range(5):
        add(store)

    assert len(claim(store, limit=2)) == 2
    assert len(claim(store, limit=2)) == 2
    assert len(claim(store, limit=2)) == 1
    assert claim(store, limit=2) == []


def test_claim_with_zero_limit_no_queues_or_unknown_queue_returns_nothing(store: Store) -> None:
    add(store)

    assert claim(store, limit=0) == []
    assert claim(store, (), limit=5) == []
    assert claim(store, ("nope",), limit=5) == []
    assert get(store, claimed_ids(store)[0]).state is JobState.RUNNING


def test_claim_naming_a_queue_twice_still_fills_the_limit(store: Store) -> None:
    """validate.lease_params keeps duplicate queue names, and the dispatcher reads a short
    claim as "queue drained"; so a repeated name must not shrink the claim."""
    a, b = add(store), add(store)

    assert claimed_ids(store, ("q", "q"), limit=2) == [a, b]


def test_claimed_job_is_running_with_attempt_counted_and_lease_set(store: Store) -> None:
    job_id = add(store)
    [job] = claim(store, now=NOW + 7, lease_us=12 * SECOND, worker="worker-9")

    assert job.id == job_id
    assert job.state is JobState.RUNNING
    assert job.attempts == 1
    assert job.started_at == NOW + 7
    assert job.lease_expires_at == NOW + 7 + 12 * SECOND
    assert job.worker_id == "worker-9"
    assert job.lease_id is not None and re.fullmatch(r"[0-9a-f]{16}", job.lease_id)
    assert get(store, job_id) == job


def test_claim_with_empty_worker_id_stores_none(store: Store) -> None:
    add(store)
    assert claim(store, worker="")[0].worker_id is None


def test_each_delivery_gets_a_new_lease_id_and_counts_an_attempt(store: Store) -> None:
    add(store)
    first = claim_one(store)
    nack(store, ref(first), delay=0)
    second = claim_one(store)

    assert second.attempts == 2
    assert second.lease_id != first.lease_id


def test_two_claims_never_return_the_same_job(store: Store) -> None:
    all_ids = {add(store, "q1" if i % 2 else "q2") for i in range(10)}
    seen: list[str] = []
    leases: set[str | None] = set()
    while batch := claim(store, ("q1", "q2"), limit=3):
        seen += [j.id for j in batch]
        leases |= {j.lease_id for j in batch}

    assert sorted(seen) == sorted(all_ids)
    assert len(leases) == 10


def test_paused_queue_yields_nothing_and_resume_restores_delivery(store: Store) -> None:
    paused_job = add(store, "p")
    other_job = add(store, "o")
    set_paused(store, "p", True)

    assert claim(store, ("p",)) == []
    assert claimed_ids(store, ("p", "o"), limit=5) == [other_job]
    later = add(store, "p")  # a paused queue still accepts work
    assert store.paused_queues() == {"p"}

    set_paused(store, "p", False)
    assert store.paused_queues() == set()
    assert claimed_ids(store, ("p",), limit=5) == [paused_job, later]


def test_pausing_an_unknown_queue_creates_it_paused(store: Store) -> None:
    set_paused(store, "future", True)
    add(store, "future")

    assert claim(store, ("future",)) == []
    assert store.queue_stats(["future"], NOW)[0].paused


# ===================================================================== fencing


def test_ack_with_the_live_lease_completes_the_job_with_its_result(store: Store) -> None:
    add(store)
    job = claim_one(store)
    settled = ack(store, ref(job), NOW + 5, result=b"done")

    assert settled == Settled(LeaseOutcome.OK, job.id, "q", JobState.COMPLETED)
    after = get(store, job.id)
    assert (after.state, after.completed_at, after.result) == (JobState.COMPLETED, NOW + 5, b"done")
    assert (after.lease_id, after.lease_expires_at) == (None, None)
    assert after.attempts == 1


def test_ack_with_empty_result_stores_none(store: Store) -> None:
    add(store)
    job = claim_one(store)
    ack(store, ref(job))
    assert get(store, job.id).result is None


def test_heartbeat_with_the_live_lease_extends_it(store: Store) -> None:
    add(store)
    job = claim_one(store, lease_us=10 * SECOND)
    r = ref(job)

    assert heartbeat(store, r, NOW + 4 * SECOND) == (LeaseOutcome.OK, NOW + 14 * SECOND)
    assert heartbeat(store, r, NOW + 5 * SECOND, extend_by=60 * SECOND) == (LeaseOutcome.OK, NOW + 65 * SECOND)
    assert get(store, job.id).lease_expires_at == NOW + 65 * SECOND
    # The original lease would have lapsed at NOW+10s; the extended one is still live.
    assert expire(store, NOW + 20 * SECOND) == []
    assert ack(store, r, NOW + 20 * SECOND).outcome is LeaseOutcome.OK


def test_heartbeat_may_shorten_a_lease_to_now_plus_extend_by(store: Store) -> None:
    add(store)
    job = claim_one(store, lease_us=60 * SECOND)
    assert heartbeat(store, ref(job), NOW + SECOND, extend_by=SECOND) == (LeaseOutcome.OK, NOW + 2 * SECOND)


def _stale_after_expiry_and_reclaim(store: Store) -> tuple[LeaseRef, int]:
    old = claim_one(store, lease_us=10 * SECOND)
    later = NOW + 10 * SECOND
    assert [e.job_id for e in expire(store, later)] == [old.id]
    new = claim_one(store, now=later)
    assert new.id == old.id and new.lease_id != old.lease_id
    return ref(old), later + SECOND


def _stale_after_ack(store: Store) -> tuple[LeaseRef, int]:
    job = claim_one(store)
    ack(store, ref(job), NOW + 1)
    return ref(job), NOW + 2


def _stale_after_nack(store: Store) -> tuple[LeaseRef, int]:
    job = claim_one(store)
    nack(store, ref(job), NOW + 1, delay=0)
    return ref(job), NOW + 2


def _stale_after_cancel(store: Store) -> tuple[LeaseRef, int]:
    job = claim_one(store)
    cancel(store, job.id, NOW + 1)
    return ref(job), NOW + 2


def _stale_at_lease_expiry_before_the_sweep(store: Store) -> tuple[LeaseRef, int]:
    job = claim_one(store, lease_us=10 * SECOND)
    return ref(job), NOW + 10 * SECOND  # lease_expires_at itself is already too late


def _stale_long_after_lease_expiry_before_the_sweep(store: Store) -> tuple[LeaseRef, int]:
    job = claim_one(store, lease_us=10 * SECOND)
    return ref(job), NOW + 3600 * SECOND


def _stale_after_unclaim(store: Store) -> tuple[LeaseRef, int]:
    job = claim_one(store)
    assert write(store, lambda: store.unclaim([(job.id, job.lease_id or "")], NOW + 1)) == 1
    return ref(job), NOW + 2


def _stale_after_fail_retry_and_reclaim(store: Store) -> tuple[LeaseRef, int]:
    job = claim_one(store)
    nack(store, ref(job), NOW + 1, terminal=True)
    retry(store, job.id, NOW + 2)
    again = claim_one(store, now=NOW + 2)
    assert again.attempts == job.attempts == 1  # same attempt number, different delivery
    return ref(job), NOW + 3


def _stale_unknown_job(store: Store) -> tuple[LeaseRef, int]:
    return LeaseRef(ids.uuid7(), "0123456789abcdef"), NOW


STALE_SCENARIOS = [
    _stale_after_expiry_and_reclaim,
    _stale_after_ack,
    _stale_after_nack,
    _stale_after_cancel,
    _stale_at_lease_expiry_before_the_sweep,
    _stale_long_after_lease_expiry_before_the_sweep,
    _stale_after_unclaim,
    _stale_after_fail_retry_and_reclaim,
    _stale_unknown_job,
]


#: A retried Ack after an Ack, or Nack after a Nack, with the same token is a replay (OK,
#: nothing changes): test_idempotent_writes.py covers those pairs.
_REPLAYS = {
    (_stale_after_ack, "ack"),
    (_stale_after_nack, "nack"),
    (_stale_after_nack, "nack_terminal"),
}


@pytest.mark.parametrize(
    ("scenario", "op"),
    [
        pytest.param(scenario, op, id=f"{op}-{scenario.__name__.removeprefix('_stale_')}")
        for op in ["ack", "nack", "nack_terminal", "heartbeat"]
        for scenario in STALE_SCENARIOS
        if (scenario, op) not in _REPLAYS
    ],
)
def test_settling_with_a_stale_lease_reports_stale_and_changes_nothing(store: Store, scenario: Any, op: str) -> None:
    add(store)
    add(store, "bystander")
    stale, now = scenario(store)
    before = rows(store)

    if op == "ack":
        outcome = ack(store, stale, now, result=b"r").outcome
    elif op == "nack":
        outcome = nack(store, stale, now, delay=None).outcome
    elif op == "nack_terminal":
        outcome = nack(store, stale, now, terminal=True).outcome
    else:
        outcome = heartbeat(store, stale, now, extend_by=3600 * SECOND)[0]

    # A Heartbeat of the lease CancelJob cancelled its job under says so (stop the handler).
    cancelled = op == "heartbeat" and scenario is _stale_after_cancel
    assert outcome is (LeaseOutcome.CANCEL_REQUESTED if cancelled else LeaseOutcome.STALE)
    assert rows(store) == before


@pytest.mark.parametrize("op", ["ack", "nack", "heartbeat"])
def test_settling_with_no_verified_ref_is_invalid(store: Store, op: str) -> None:
    add(store)
    claim_one(store)
    before = rows(store)

    if op == "ack":
        assert ack(store, None) == Settled(LeaseOutcome.INVALID)
    elif op == "nack":
        assert nack(store, None) == Settled(LeaseOutcome.INVALID)
    else:
        assert heartbeat(store, None) == (LeaseOutcome.INVALID, None)
    assert rows(store) == before


def test_batch_settle_reports_each_item_in_order(store: Store) -> None:
    for _ in range(3):
        add(store)
    live1, live2, gone = claim(store, limit=3)
    nack(store, ref(gone))  # an Ack with its token is STALE (a second Ack would be a replay)

    out = write(store, lambda: store.ack([(ref(live1), b""), (ref(gone), b""), (None, b""), (ref(live2), b"")], NOW))

    assert [s.outcome for s in out] == [LeaseOutcome.OK, LeaseOutcome.STALE, LeaseOutcome.INVALID, LeaseOutcome.OK]
    assert out[1].job_id == gone.id


def test_settling_the_same_lease_twice_is_ok_then_an_ok_replay(store: Store) -> None:
    add(store)
    job = claim_one(store)
    assert ack(store, ref(job)).outcome is LeaseOutcome.OK
    before = rows(store)
    again = ack(store, ref(job))
    assert (again.outcome, again.replay, again.job_id) == (LeaseOutcome.OK, True, None)
    assert rows(store) == before


# ===================================================================== tokens


def test_token_issue_and_parse_round_trip(store: Store) -> None:
    codec = TokenCodec(store.token_key())
    add(store)
    job = claim_one(store)
    assert job.lease_id is not None

    token = codec.issue(job.id, job.lease_id)

    assert codec.parse(token) == LeaseRef(job.id, job.lease_id)
    assert TokenCodec(store.token_key()).parse(token) == ref(job)  # the key is stable
    assert len(store.token_key()) == 32


def test_token_with_forged_mac_or_foreign_key_parses_to_none() -> None:
    codec = TokenCodec(b"k" * 32)
    job_id, lease_id = ids.uuid7(), "00112233aabbccdd"
    token = codec.issue(job_id, lease_id)
    mac = token.rsplit(".", 1)[1]
    forged_mac = f"{job_id}.{lease_id}.{'0' if mac[0] != '0' else '1'}{mac[1:]}"
    other_lease = f"{job_id}.ffffffffffffffff.{mac}"

    assert codec.parse(forged_mac) is None
    assert codec.parse(other_lease) is None
    assert TokenCodec(b"j" * 32).parse(token) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-a-token",
        "0190a6b2-1c3d-7e4f-8a9b-0c1d2e3f4a5b.00112233aabbccdd",
        "0190a6b2-1c3d-7e4f-8a9b-0c1d2e3f4a5b.00112233aabbccdd.0011223344556677.extra",
        "0190A6B2-1C3D-7E4F-8A9B-0C1D2E3F4A5B.00112233aabbccdd.0011223344556677",
        "0190a6b2-1c3d-7e4f-8a9b-0c1d2e3f4a5b.00112233aabbccd.0011223344556677",
        "0190a6b2-1c3d-7e4f-8a9b-0c1d2e3f4a5b.00112233aabbccdd.0011223344556677\n",
        "x" * 10_000,
    ],
)
def test_malformed_token_text_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        TokenCodec(b"k" * 32).parse(text)


def test_a_genuine_token_with_a_trailing_newline_is_malformed() -> None:
    codec = TokenCodec(b"k" * 32)
    token = codec.issue(ids.uuid7(), "00112233aabbccdd")
    assert codec.parse(token) is not None
    with pytest.raises(ValueError):
        codec.parse(token + "\n")


def test_token_codec_refuses_a_short_key() -> None:
    with pytest.raises(ValueError):
        TokenCodec(b"short")


# ===================================================================== nack and backoff


def test_nack_with_retry_delay_reschedules_at_now_plus_delay(store: Store) -> None:
    add(store)
    job = claim_one(store)
    settled = nack(store, ref(job), NOW + 3, message="flaky", delay=20 * SECOND)

    assert settled == Settled(LeaseOutcome.OK, job.id, "q", JobState.PENDING, NOW + 3 + 20 * SECOND)
    after = get(store, job.id)
    assert (after.state, after.run_at, after.attempts, after.error_message) == (
        JobState.PENDING, NOW + 3 + 20 * SECOND, 1, "flaky",
    )
    assert (after.lease_id, after.lease_expires_at, after.completed_at) == (None, None, None)
    assert claim(store, now=NOW + 3 + 20 * SECOND - 1) == []
    assert claim_one(store, now=NOW + 3 + 20 * SECOND).attempts == 2


def test_nack_with_zero_delay_is_claimable_at_once(store: Store) -> None:
    add(store)
    nack(store, ref(claim_one(store)), NOW + 1, delay=0)
    assert claim_one(store, now=NOW + 1).attempts == 2


@pytest.mark.parametrize("attempt", [1, 2, 3, 4])
def test_nack_without_delay_uses_exponential_backoff_with_jitter(store: Store, attempt: int) -> None:
    backoff = Backoff(base_us=2 * SECOND, max_us=10 * SECOND)
    add(store, max_attempts=5)
    now = NOW
    for _ in range(attempt - 1):
        nack(store, ref(claim_one(store, now=now)), now, delay=0)
    job = claim_one(store, now=now)
    assert job.attempts == attempt

    settled = nack(store, ref(job), now, delay=None, backoff=backoff)

    full = min(10 * SECOND, 2 * SECOND * 2 ** (attempt - 1))
    assert settled.run_at is not None
    assert full // 2 <= settled.run_at - now <= full
    assert get(store, job.id).run_at == settled.run_at


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 41, 1000])
def test_backoff_delay_lies_between_half_and_full_of_capped_exponential(attempt: int) -> None:
    backoff = Backoff(base_us=SECOND, max_us=60 * SECOND)
    rng = random.Random(attempt)
    full = min(60 * SECOND, SECOND * 2 ** (attempt - 1))

    delays = [backoff.delay_us(attempt, rng) for _ in range(200)]

    assert all(full // 2 <= d <= full for d in delays)
    assert len(set(delays)) > 1  # jittered, not lockstep


def test_backoff_is_deterministic_for_a_seeded_rng_and_treats_attempt_zero_as_first() -> None:
    backoff = Backoff(base_us=SECOND, max_us=60 * SECOND)
    a = [backoff.delay_us(n, random.Random(7)) for n in range(1, 8)]
    b = [backoff.delay_us(n, random.Random(7)) for n in range(1, 8)]
    assert a == b
    assert SECOND // 2 <= backoff.delay_us(0, random.Random(1)) <= SECOND


def test_terminal_nack_fails_the_job_even_with_attempts_left(store: Store) -> None:
    add(store, max_attempts=5)
    job = claim_one(store)
    settled = nack(store, ref(job), NOW + 9, message="poison", terminal=True)

    assert settled == Settled(LeaseOutcome.OK, job.id, "q", JobState.FAILED)
    after = get(store, job.id)
    assert (after.state, after.error_message, after.completed_at, after.attempts) == (
        JobState.FAILED, "poison", NOW + 9, 1,
    )
    assert (after.lease_id, after.lease_expires_at) == (None, None)
    assert claim(store, now=NOW + 9) == []


def test_nack_of_the_last_attempt_fails_the_job(store: Store) -> None:
    add(store, max_attempts=2)
    first = nack(store, ref(claim_one(store)), delay=0, message="one")
    second = nack(store, ref(claim_one(store)), delay=0, message="two")

    assert first.state is JobState.PENDING
    assert second.state is JobState.FAILED
    job = get(store, second.job_id or "")
    assert (job.state, job.attempts, job.error_message) == (JobState.FAILED, 2, "two")


def test_nack_with_empty_message_stores_no_error_message(store: Store) -> None:
    add(store)
    job = claim_one(store)
    nack(store, ref(job), message="")
    assert get(store, job.id).error_message is None


# ===================================================================== lease expiry


def test_expired_lease_returns_the_job_to_pending_counting_the_attempt(store: Store) -> None:
    job_id = add(store)
    claim_one(store, lease_us=10 * SECOND, worker="w-exp")
    lapse = NOW + 10 * SECOND

    assert expire(store, lapse - 1) == []
    assert expire(store, lapse) == [Expired(job_id, "q", JobState.PENDING, lapse)]  # lapses at its expiry

    job = get(store, job_id)
    assert (job.state, job.attempts, job.run_at) == (JobState.PENDING, 1, lapse)
    assert job.error_message is not None and "lease expired" in job.error_message
    assert "w-exp" in job.error_message
    assert (job.lease_id, job.lease_expires_at, job.completed_at) == (None, None, None)
    assert claim_one(store, now=lapse).attempts == 2


def test_expired_lease_on_the_last_attempt_fails_the_job(store: Store) -> None:
    job_id = add(store, max_attempts=2)
    nack(store, ref(claim_one(store)), delay=0)
    claim_one(store, lease_us=SECOND)
    original_run_at = get(store, job_id).run_at

    assert expire(store, NOW + SECOND) == [Expired(job_id, "q", JobState.FAILED, original_run_at)]
    job = get(store, job_id)
    assert (job.state, job.attempts, job.completed_at) == (JobState.FAILED, 2, NOW + SECOND)
    assert job.error_message is not None and "lease expired" in job.error_message
    assert (job.lease_id, job.lease_expires_at) == (None, None)


def test_expire_leases_takes_the_earliest_lapsed_leases_up_to_the_limit(store: Store) -> None:
    by_lease = {}
    for seconds in (5, 3, 9, 1, 7):
        job_id = add(store, payload=bytes([seconds]))
        assert claim_one(store, lease_us=seconds * SECOND).id == job_id
        by_lease[seconds] = job_id
    live = add(store)
    claim_one(store, lease_us=3600 * SECOND)
    pending = add(store)
    later = NOW + 10 * SECOND

    def sweep() -> set[str]:
        return {e.job_id for e in expire(store, later, limit=2)}

    assert sweep() == {by_lease[1], by_lease[3]}
    assert sweep() == {by_lease[5], by_lease[7]}
    assert sweep() == {by_lease[9]}
    assert expire(store, later, limit=2) == []
    assert get(store, live).state is JobState.RUNNING
    assert get(store, pending).state is JobState.PENDING
    assert store.next_lease_expiry() == NOW + 3600 * SECOND


# ===================================================================== cancel, retry, unclaim


def test_cancel_of_a_pending_job_cancels_it(store: Store) -> None:
    job_id = add(store)
    job, was_running = cancel(store, job_id, NOW + 4)

    assert not was_running
    assert (job.state, job.completed_at) == (JobState.CANCELLED, NOW + 4)
    assert get(store, job_id) == job
    assert claim(store, now=NOW + 4) == []


def test_cancel_of_a_running_job_cancels_it_and_drops_the_lease(store: Store) -> None:
    add(store)
    running = claim_one(store)
    job, was_running = cancel(store, running.id, NOW + 4)

    assert was_running
    assert (job.state, job.completed_at, job.lease_id, job.lease_expires_at) == (
        JobState.CANCELLED, NOW + 4, None, None,
    )
    assert expire(store, NOW + 3600 * SECOND) == []


@pytest.mark.parametrize("make", [completed_job, failed_job])
def test_cancel_of_a_completed_or_failed_job_is_a_failed_precondition(store: Store, make: Any) -> None:
    job_id = make(store)
    before = rows(store)
    with pytest.raises(FailedPrecondition):
        cancel(store, job_id)
    assert rows(store) == before


def test_cancel_of_an_unknown_job_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        cancel(store, ids.uuid7())


@pytest.mark.parametrize("make", [failed_job, cancelled_job])
def test_retry_of_a_failed_or_cancelled_job_makes_it_pending_with_attempts_reset(store: Store, make: Any) -> None:
    job_id = make(store, max_attempts=1)
    job = retry(store, job_id, NOW + 50)

    assert (job.state, job.attempts, job.run_at, job.completed_at, job.result) == (
        JobState.PENDING, 0, NOW + 50, None, None,
    )
    assert (job.lease_id, job.lease_expires_at, job.worker_id) == (None, None, None)
    assert get(store, job_id) == job
    again = claim_one(store, now=NOW + 50)
    assert (again.id, again.attempts) == (job_id, 1)


def test_retry_of_a_job_failed_by_lease_expiry_redrives_it(store: Store) -> None:
    job_id = add(store, max_attempts=1)
    claim_one(store, lease_us=SECOND)
    assert expire(store, NOW + SECOND)[0].state is JobState.FAILED
    assert retry(store, job_id, NOW + 2 * SECOND).state is JobState.PENDING
    assert claim_one(store, now=NOW + 2 * SECOND).id == job_id


def _running(store: Store) -> str:
    add(store)
    return claim_one(store).id


@pytest.mark.parametrize("make", [_running, completed_job])
def test_retry_of_a_running_or_completed_job_is_a_failed_precondition(store: Store, make: Any) -> None:
    job_id = make(store)
    before = rows(store)
    with pytest.raises(FailedPrecondition):
        retry(store, job_id)
    assert rows(store) == before


def test_retry_of_an_unknown_job_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        retry(store, ids.uuid7())


def test_unclaim_returns_the_job_to_pending_without_counting_the_attempt(store: Store) -> None:
    job_id = add(store, run_at=NOW - 5)
    job = claim_one(store)
    assert job.lease_id is not None

    assert write(store, lambda: store.unclaim([(job_id, job.lease_id or "")], NOW + 1)) == 1

    after = get(store, job_id)
    assert (after.state, after.attempts, after.run_at) == (JobState.PENDING, 0, NOW - 5)
    assert (after.lease_id, after.lease_expires_at, after.started_at, after.worker_id) == (None, None, None, None)
    assert claim_one(store, now=NOW + 1).attempts == 1


def test_unclaim_ignores_other_deliveries_and_non_running_jobs(store: Store) -> None:
    add(store)
    pending_id = add(store)
    job = claim_one(store)
    before = rows(store)

    n = write(store, lambda: store.unclaim([(job.id, "ffffffffffffffff"), (pending_id, "0000000000000000")], NOW))

    assert n == 0
    assert rows(store) == before


# ===================================================================== retention


def test_delete_finished_deletes_only_that_state_older_than_the_cutoff_in_batches(store: Store) -> None:
    old_done = [completed_job(store, now=NOW + i) for i in range(5)]
    new_done = completed_job(store, now=NOW + 100)
    old_failed = failed_job(store, now=NOW)
    old_cancelled = cancelled_job(store, now=NOW)
    pending = add(store, now=NOW)
    running = add(store, "r", now=NOW)
    claim_one(store, "r")
    cutoff = NOW + 100

    def delete(state: JobState) -> int:
        return write(store, lambda: store.delete_finished(state, cutoff, 2))

    assert [delete(JobState.COMPLETED) for _ in range(4)] == [2, 2, 1, 0]
    assert all(store.get_job(j) is None for j in old_done)
    remaining = {j.id for _, j in store.list_jobs(None, None, 0, 100)}
    assert remaining == {new_done, old_failed, old_cancelled, pending, running}

    assert delete(JobState.FAILED) == 1
    assert delete(JobState.CANCELLED) == 1
    assert {j.id for _, j in store.list_jobs(None, None, 0, 100)} == {new_done, pending, running}


def test_delete_finished_deletes_the_oldest_first(store: Store) -> None:
    newer = completed_job(store, now=NOW + 10)
    older = completed_job(store, now=NOW)

    assert write(store, lambda: store.delete_finished(JobState.COMPLETED, NOW + 100, 1)) == 1
    assert store.get_job(older) is None
    assert store.get_job(newer) is not None


def test_idempotency_key_is_free_again_once_its_job_is_deleted(store: Store) -> None:
    first = completed_job(store, key="k")
    assert write(store, lambda: store.delete_finished(JobState.COMPLETED, NOW + 1, 10)) == 1

    again = enqueue(store, spec(key="k"), now=NOW + 2)[0]

    assert not again.duplicate
    assert again.job_id != first


# ===================================================================== stats and listing


def test_queue_stats_counts_each_state_and_splits_pending_from_scheduled(store: Store) -> None:
    add(store, run_at=NOW - 5 * SECOND)
    add(store)
    add(store, run_at=NOW + 60 * SECOND)
    add(store, priority=9)
    claim_one(store)  # the priority-9 job
    completed_job(store, priority=8)
    failed_job(store, priority=8)
    cancelled_job(store)
    set_paused(store, "idle", True)

    stats = store.queue_stats([], NOW)

    assert [s.queue for s in stats] == ["idle", "q"]
    idle, q = stats
    assert (idle.pending, idle.scheduled, idle.running, idle.paused, idle.oldest_ready_run_at) == (0, 0, 0, True, None)
    assert (q.pending, q.scheduled, q.running, q.completed, q.failed, q.cancelled) == (2, 1, 1, 1, 1, 1)
    assert q.oldest_ready_run_at == NOW - 5 * SECOND
    assert not q.paused

    [later] = store.queue_stats(["q"], NOW + 60 * SECOND)
    assert (later.pending, later.scheduled) == (3, 0)


def test_queue_stats_of_a_never_seen_queue_is_all_zero(store: Store) -> None:
    add(store)
    [s] = store.queue_stats(["ghost"], NOW)
    counts = (s.pending, s.scheduled, s.running, s.completed, s.failed, s.cancelled)
    assert (s.queue, counts) == ("ghost", (0,) * 6)
    assert (s.oldest_ready_run_at, s.paused) == (None, False)


def test_list_jobs_pages_in_enqueue_order_with_queue_and_state_filters(store: Store) -> None:
    made = [add(store, "a" if i % 2 == 0 else "b") for i in range(7)]
    running = claim(store, ("a",), limit=2)  # made[0], made[2]

    def pages(queue: str | None, state: JobState | None, size: int) -> list[list[str]]:
        out, after = [], 0
        while page := store.list_jobs(queue, state, after, size):
            out.append([j.id for _, j in page])
            after = page[-1][0]
        return out

    assert pages(None, None, 3) == [made[0:3], made[3:6], made[6:7]]
    assert pages("a", None, 2) == [[made[0], made[2]], [made[4], made[6]]]
    assert pages("", None, 100) == [made]
    assert pages(None, JobState.RUNNING, 1) == [[j.id] for j in running]
    assert pages("a", JobState.PENDING, 10) == [[made[4], made[6]]]
    assert pages("b", JobState.RUNNING, 10) == []
    rowids = [rowid for rowid, _ in store.list_jobs(None, None, 0, 100)]
    assert rowids == sorted(rowids)


def test_list_jobs_search_matches_the_start_of_an_id_or_a_key(store: Store) -> None:
    order = add(store, "a", key="order-42")
    other = add(store, "a", key="order-7*[x")
    auto = add(store, "b", key="auto-0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee")  # stored as the id
    plain = add(store, "b")

    def found(text: str, queue: str | None = None) -> set[str]:
        return {j.id for _, j in store.list_jobs(queue, None, 0, 100, text)}

    assert found("order-") == {order, other}
    assert found("order-4") == {order}
    assert found("order-7*[") == {other}  # GLOB characters are taken literally
    assert found("order-7?") == set()
    assert found("ORDER-") == set()  # case-sensitive
    assert found(plain) == {plain} and plain[:8] != "0190aaaa"
    assert found("auto-0190aaaa") == {auto} and found("0190aaaa-bbbb") == {auto}
    assert found("order-", "b") == set()
    assert found("") == {order, other, auto, plain}


def test_due_time_queries_report_future_pending_work(store: Store) -> None:
    add(store, "a", run_at=NOW + 30 * SECOND)
    add(store, "a", run_at=NOW + 10 * SECOND)
    add(store, "b", run_at=NOW - 1)
    add(store, "c", run_at=NOW + 5 * SECOND)

    assert sorted(store.future_due_times(NOW)) == [("a", NOW + 10 * SECOND), ("c", NOW + 5 * SECOND)]
    assert store.next_due_after("a", NOW) == NOW + 10 * SECOND
    assert store.next_due_after("a", NOW + 10 * SECOND) == NOW + 30 * SECOND
    assert store.next_due_after("b", NOW) is None
    assert store.next_lease_expiry() is None


# ===================================================================== schema constraints


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE jobs SET status = 'running'",  # no lease
        "UPDATE jobs SET status = 'running', lease_id = 'x'",  # no expiry
        "UPDATE jobs SET status = 'bogus'",
        "UPDATE jobs SET status = 'completed'",  # no completed_at
        "UPDATE jobs SET completed_at = 1",  # pending with completed_at
        "UPDATE jobs SET lease_id = 'x', lease_expires_at = 1",  # pending with a lease
        "UPDATE jobs SET status = 'running', lease_id = 'x', lease_expires_at = 1, attempts = 4",
        "UPDATE jobs SET attempts = -1",
        "UPDATE jobs SET max_attempts = 0",
        "UPDATE jobs SET queue_name = ''",
        "UPDATE jobs SET idempotency_key = ''",
        "UPDATE jobs SET lease_us = 0",
        "UPDATE jobs SET run_at = 'soon'",  # STRICT
        "UPDATE node SET txid = -1",
        "INSERT INTO node (id, txid, token_key) VALUES (2, 0, randomblob(32))",
        "UPDATE node SET token_key = x'00'",
        "UPDATE queues SET paused = 2",
    ],
)
def test_schema_rejects_illegal_rows(store: Store, sql: str) -> None:
    add(store)
    before = rows(store)
    with pytest.raises(apsw.ConstraintError):
        store.conn.execute(sql)
    assert rows(store) == before


def test_schema_rejects_a_second_job_with_the_same_queue_and_key(store: Store) -> None:
    job_id = add(store, key="k")
    with pytest.raises(apsw.ConstraintError):
        store.conn.execute(
            "INSERT INTO jobs (id, queue_name, payload, status, max_attempts, run_at, created_at, idempotency_key)"
            " SELECT ?, queue_name, payload, status, max_attempts, run_at, created_at, idempotency_key"
            " FROM jobs WHERE id = ?",
            (ids.uuid7(), job_id),
        )


def test_schema_accepts_a_legal_running_row(store: Store) -> None:
    job_id = add(store)
    store.conn.execute(
        "UPDATE jobs SET status = 'running', lease_id = 'x', lease_expires_at = 1, attempts = 3 WHERE id = ?",
        (job_id,),
    )
    assert get(store, job_id).state is JobState.RUNNING


# ===================================================================== migrations


def test_migrate_creates_the_schema_and_sets_user_version(db_path: str) -> None:
    conn = db.connect(db_path, writer=True)
    try:
        assert conn.execute("PRAGMA user_version").get == 0
        assert db.migrate(conn) == len(db.MIGRATIONS)
        assert conn.execute("PRAGMA user_version").get == len(db.MIGRATIONS)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
        assert {"node", "queues", "jobs"} <= tables
        assert conn.execute("PRAGMA journal_mode").get == "wal"
    finally:
        conn.close()


def test_migrate_on_a_current_database_is_a_no_op(store: Store, db_path: str) -> None:
    add(store)
    key = store.token_key()
    schema = list(store.conn.execute("SELECT sql FROM sqlite_schema ORDER BY name"))

    assert db.migrate(store.conn) == len(db.MIGRATIONS)
    other = open_store(db_path)  # a second open migrates again
    try:
        assert other.conn.execute("PRAGMA user_version").get == len(db.MIGRATIONS)
        assert other.token_key() == key
        assert list(other.conn.execute("SELECT sql FROM sqlite_schema ORDER BY name")) == schema
        assert len(other.list_jobs(None, None, 0, 10)) == 1
    finally:
        other.conn.close()


def test_migrate_refuses_a_database_from_a_newer_server(store: Store) -> None:
    store.conn.execute(f"PRAGMA user_version = {len(db.MIGRATIONS) + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        db.migrate(store.conn)


# ===================================================================== writer


async def _open_writer(path: str, clock: ManualClock | None = None) -> Writer:
    writer = Writer(path, clock or ManualClock())
    writer.start()
    return writer


def _enqueue_op(queue: str = "q") -> Any:
    def op(store: Store, now: int) -> str:
        return store.enqueue([spec(queue)], now, new_ids(1))[0].job_id

    return op


async def _in_one_group(writer: Writer, ops: list[Any]) -> list[Any]:
    """Submit ``ops`` concurrently (asyncio.gather) while the writer thread is held inside
    another op, so they all queue up and commit as one group. Returns each op's
    (result, txid), or the exception it raised."""
    entered, gate = threading.Event(), threading.Event()

    def hold(_store: Store, _now: int) -> None:
        entered.set()
        gate.wait(10)

    held = asyncio.ensure_future(writer.submit(hold))
    assert await asyncio.to_thread(entered.wait, 10)
    batch = asyncio.gather(*(writer.submit(op) for op in ops), return_exceptions=True)
    await asyncio.sleep(0)  # every submission has reached the writer's queue
    gate.set()
    await held
    return list(await batch)


def _read(path: str) -> Store:
    return Store(db.connect(path))


async def test_writer_group_commits_concurrent_submissions(db_path: str) -> None:
    writer = await _open_writer(db_path)
    try:
        await writer.submit(_enqueue_op())  # warm up
        commits_before = writer.commits
        results = await _in_one_group(writer, [_enqueue_op() for _ in range(50)])
    finally:
        writer.close()

    job_ids = [job_id for job_id, _ in results]
    assert len(set(job_ids)) == 50
    assert writer.commits - commits_before < 50
    assert writer.commits - commits_before <= 2
    assert len({txid for _, txid in results}) == 1
    reader = _read(db_path)
    try:
        assert all(reader.get_job(j) is not None for j in job_ids)
    finally:
        reader.conn.close()


async def test_writer_batches_a_plain_gather_of_submissions(db_path: str) -> None:
    writer = await _open_writer(db_path)
    try:
        results = await asyncio.gather(*(writer.submit(_enqueue_op()) for _ in range(50)))
    finally:
        writer.close()
    assert len({job_id for job_id, _ in results}) == 50
    assert writer.ops == 50
    assert writer.commits < 50
    txids = [txid for _, txid in results]
    assert txids == sorted(txids)  # resolved in submission order, txids never go back


async def test_writer_failing_op_rolls_back_alone_within_a_batch(db_path: str) -> None:
    doomed: list[str] = []

    def not_found(store: Store, now: int) -> None:
        doomed.append(_enqueue_op("doomed")(store, now))
        raise NotFound("nope")

    def constraint(store: Store, now: int) -> None:
        doomed.append(_enqueue_op("doomed")(store, now))
        store.conn.execute("UPDATE jobs SET status = 'bogus'")

    writer = await _open_writer(db_path)
    try:
        a, err1, b, err2, c = await _in_one_group(
            writer, [_enqueue_op(), not_found, _enqueue_op(), constraint, _enqueue_op()]
        )
        # A lone failing op rolls back too, and the writer carries on.
        with pytest.raises(NotFound):
            await writer.submit(not_found)
        (d, _) = await writer.submit(_enqueue_op())
    finally:
        writer.close()

    assert isinstance(err1, NotFound)
    assert isinstance(err2, apsw.ConstraintError)
    ok = [a, b, c]
    assert all(isinstance(r, tuple) for r in ok)
    assert len({txid for _, txid in ok}) == 1
    reader = _read(db_path)
    try:
        assert all(reader.get_job(job_id) is not None for job_id, _ in ok)
        assert reader.get_job(d) is not None
        assert len(doomed) == 3
        assert all(reader.get_job(job_id) is None for job_id in doomed)
        assert reader.queue_stats(["doomed"], NOW)[0].pending == 0
    finally:
        reader.conn.close()


async def test_writer_txid_increases_per_commit_and_is_shared_within_one(db_path: str) -> None:
    writer = await _open_writer(db_path)
    try:
        sequential = [(await writer.submit(_enqueue_op()))[1] for _ in range(5)]
        grouped = {txid for _, txid in await _in_one_group(writer, [_enqueue_op() for _ in range(10)])}
        after = (await writer.submit(_enqueue_op()))[1]
        read_only = (await writer.submit(lambda s, _n: s.get_job("none")))[1]
    finally:
        writer.close()

    assert sequential == sorted(set(sequential))
    assert sequential[0] >= 1
    assert len(grouped) == 1
    (group_txid,) = grouped
    assert sequential[-1] < group_txid < after
    assert read_only == after == writer.txid  # a commit that changed nothing does not move it


async def test_writer_passes_the_clock_time_to_each_op(db_path: str) -> None:
    clock = ManualClock(NOW)
    writer = await _open_writer(db_path, clock)
    try:
        first, _ = await writer.submit(lambda _s, now: now)
        clock.advance(2.5)
        second, _ = await writer.submit(lambda _s, now: now)
    finally:
        writer.close()
    assert (first, second) == (NOW, NOW + 2_500_000)


async def test_writer_txids_resume_above_those_handed_out_before_a_restart(db_path: str) -> None:
    writer = await _open_writer(db_path)
    try:
        last = max([(await writer.submit(_enqueue_op()))[1] for _ in range(3)])
    finally:
        writer.close()
    writer = await _open_writer(db_path)
    try:
        resumed = (await writer.submit(_enqueue_op()))[1]
    finally:
        writer.close()
    assert resumed > last


async def test_writer_txids_stay_monotonic_across_a_restart_after_a_failed_commit(db_path: str) -> None:
    """COMMIT itself can fail (here: a deferred foreign key); the txid reservation
    written in that transaction is lost, so the writer must not count on it."""

    def commit_fails(store: Store, now: int) -> None:
        store.enqueue([spec()], now, new_ids(1))
        store.conn.execute(
            "CREATE TEMP TABLE parent (id INTEGER PRIMARY KEY);"
            "CREATE TEMP TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);"
            "INSERT INTO child VALUES (1);"
        )

    writer = await _open_writer(db_path)
    try:
        with pytest.raises(apsw.ConstraintError):
            await writer.submit(commit_fails)
        handed_out = [(await writer.submit(_enqueue_op()))[1] for _ in range(3)]
    finally:
        writer.close()
    writer = await _open_writer(db_path)
    try:
        resumed = (await writer.submit(_enqueue_op()))[1]
    finally:
        writer.close()

    assert handed_out == sorted(set(handed_out))
    assert resumed > max(handed_out)


async def test_writer_refuses_submissions_after_close(db_path: str) -> None:
    writer = await _open_writer(db_path)
    assert writer.alive
    writer.close()
    assert not writer.alive
    with pytest.raises(Unavailable):
        await writer.submit(_enqueue_op())


async def test_writer_start_reports_a_refused_database(db_path: str) -> None:
    store = open_store(db_path)
    store.conn.execute(f"PRAGMA user_version = {len(db.MIGRATIONS) + 1}")
    store.conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        await _open_writer(db_path)



def test_a_sender_chosen_job_id_is_stored_once_and_a_repeat_is_a_duplicate(store: Store) -> None:
    """An edge node (the outbox) assigns job ids before buffering; its drain may re-send
    (a forward that timed out after the commit): the primary stores each id once."""
    from edgeq_server.models import JobSpec

    chosen = "0190f3c2-0000-7000-8000-000000000001"
    first = write(store, lambda: store.enqueue([JobSpec("q", b"a", None, 3, job_id=chosen)], NOW, new_ids(1)))
    again = write(
        store,
        lambda: store.enqueue(
            [JobSpec("q", b"b", None, 3, job_id=chosen), JobSpec("q", b"c", None, 3, job_id=chosen)], NOW, new_ids(2)
        ),
    )
    assert (first[0].job_id, first[0].duplicate) == (chosen, False)
    assert [(r.job_id, r.duplicate) for r in again] == [(chosen, True), (chosen, True)]
    assert get(store, chosen).payload == b"a"


# ---------------------------------------------------------------------- edge ids and the edge log


def test_a_key_twin_accepted_at_another_edge_is_recorded_as_an_alias_and_forgotten_with_the_job(store: Store) -> None:
    from dataclasses import replace

    first = enqueue(store, replace(spec(key="k"), job_id=ids.uuid7()))[0]
    twin_id = ids.uuid7()
    twin = enqueue(store, replace(spec(key="k", payload=b"other"), job_id=twin_id))[0]
    assert twin.duplicate and twin.job_id == first.job_id
    assert store.get_job(twin_id) is not None and store.get_job(twin_id).id == first.job_id  # type: ignore[union-attr]
    again = enqueue(store, replace(spec(key="k"), job_id=twin_id))[0]  # a resend changes nothing
    assert again.duplicate and again.job_id == first.job_id
    assert store.job_id_by_key("q", "k") == first.job_id and store.job_id_by_key("q", "nope") is None
    job = claim_one(store)
    write(store, lambda: store.ack([(ref(job), b"")], NOW))
    assert write(store, lambda: store.delete_finished(JobState.COMPLETED, NOW + 1, 10)) == 1
    assert write(store, lambda: store.delete_orphan_aliases(10)) == 1
    assert store.get_job(twin_id) is None


def test_edge_log_store_appends_finds_drains_and_forgets(tmp_path: Any) -> None:
    from edgeq_server.store import EdgeLogStore

    log = EdgeLogStore(str(tmp_path / "edge" / "log.db"))
    try:
        with log.transaction():
            s1 = log.append(b"req-1", [("id-1", "q", "k1"), ("id-2", "q", "")], NOW)
            s2 = log.append(b"req-2", [("id-3", "r", "k1")], NOW + 1)
        assert s2 > s1
        assert log.totals() == (2, 3, 10, 0, NOW)
        assert [(r.seq, r.request, r.jobs) for r in log.oldest(10)] == [(s1, b"req-1", 2), (s2, b"req-2", 1)]
        assert log.find_key("q", "k1") == "id-1" and log.find_key("r", "k1") == "id-3"
        assert log.find_key("q", "") == "id-2" and log.find_key("q", "zz") is None
        assert log.accepted_by_queue() == {"q": 2, "r": 1}
        found = log.find("id-2")
        assert found is not None and found.request == b"req-1" and found.index == 1 and found.drained_txid is None
        log.drained([s1], [("id-1", "stored-1"), ("id-2", "id-2")], txid=40, now=NOW + 10)
        found = log.find("id-1")
        assert found is not None and found.request is None
        assert found.drained_txid == 40 and found.stored_id == "stored-1"
        assert log.find_key("q", "k1") == "stored-1"  # until applied, the key names the stored job
        assert log.totals()[:3] == (1, 1, 5)
        log.reject(s2, "INVALID_ARGUMENT: no")
        assert log.totals() == (0, 0, 0, 1, None) and log.dead_rows()[0][3] == "INVALID_ARGUMENT: no"
        rejected = log.find("id-3")
        assert rejected is not None and rejected.rejected == "INVALID_ARGUMENT: no"
        assert log.find_key("r", "k1") is None  # a refused job names nothing
        assert log.forget_applied(39) == 0 and log.forget_applied(40) == 2
        assert log.find("id-1") is None and log.find("id-3") is not None
    finally:
        log.close()


def test_edge_log_store_keeps_drained_requests_to_offer_again_then_prunes_them(tmp_path: Any) -> None:
    """A drained request is not waiting (not read by the drain, not counted) but is kept:
    ``reoffer`` puts the ones drained since a time back in line, in their old order, and
    ``prune_drained`` deletes the ones drained before a time."""
    from edgeq_server.store import EdgeLogStore

    log = EdgeLogStore(str(tmp_path / "log.db"))
    try:
        with log.transaction():
            s1 = log.append(b"req-1", [("id-1", "q", "")], NOW)
            s2 = log.append(b"req-2", [("id-2", "q", "")], NOW + 1)
            s3 = log.append(b"req-3", [("id-3", "q", "")], NOW + 2)
        log.drained([s1], [("id-1", "id-1")], txid=7, now=NOW + 100)
        log.drained([s2], [("id-2", "id-2")], txid=8, now=NOW + 200)
        assert [r.seq for r in log.oldest(10)] == [s3]
        assert log.totals()[:3] == (1, 1, 5) and log.pending() == 1
        assert log.accepted_by_queue() == {"q": 1}
        assert log.reoffer(since=NOW + 150) == 1  # only s2 was drained since then
        assert [r.seq for r in log.oldest(10)] == [s2, s3]
        assert log.totals()[:3] == (2, 2, 10)
        assert log.prune_drained(before=NOW + 101) == 0  # s1 gone, nothing drained left
        assert log.reoffer(since=0) == 0
        assert [r.seq for r in log.oldest(10)] == [s2, s3]
    finally:
        log.close()


def test_an_edge_log_from_before_drained_at_is_migrated_on_open(tmp_path: Any) -> None:
    import apsw

    from edgeq_server.store import EdgeLogStore

    path = str(tmp_path / "old.db")
    old = apsw.Connection(path)
    old.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, request BLOB NOT NULL,"
        " jobs INTEGER NOT NULL CHECK (jobs > 0), created_at INTEGER NOT NULL, rejected TEXT) STRICT"
    )
    old.execute("INSERT INTO outbox (request, jobs, created_at) VALUES (x'01', 1, 5)")
    old.close()
    log = EdgeLogStore(path)
    try:
        assert [(r.seq, r.request) for r in log.oldest(10)] == [(1, b"\x01")]
    finally:
        log.close()


def test_hot_queries_use_their_indexes(store: Store) -> None:
    """EXPLAIN QUERY PLAN of the claim, the retention sweep and the lease-expiry sweep: each
    a SEARCH on its index, never a SCAN of the jobs table or a temporary sort (their cost
    must not grow with the jobs stored: bench/bench_scale.py measures it)."""
    plans = {
        "claim": ("SELECT rowid, priority, run_at FROM jobs WHERE queue_name = ? AND grp = '' AND status = 'pending'"
                  " AND run_at <= ? ORDER BY priority DESC, run_at, rowid LIMIT ?", ("q", 0, 10)),
        "group claim": ("SELECT rowid, priority, run_at FROM jobs WHERE queue_name = ? AND grp = ?"
                        " AND status = 'pending' AND run_at <= ? ORDER BY priority DESC, run_at, rowid", ("q", "g", 0)),
        "group turn": ("SELECT pass, due_at, grp, weight FROM job_groups WHERE queue_name = ?1 AND due_at IS NOT NULL"
                       " AND due_at <= ?2 AND (pass, due_at, grp) > (?4, ?5, ?6) ORDER BY pass, due_at, grp LIMIT ?3",
                       ("q", 0, 10, 0.0, 0, "g")),
        "retention": ("SELECT rowid FROM jobs WHERE status IN ('completed', 'failed', 'cancelled')"
                      " AND status = ? AND completed_at < ? ORDER BY completed_at LIMIT ?", ("cancelled", 0, 10)),
        "expiry": ("SELECT rowid FROM jobs WHERE status = 'running' AND lease_expires_at <= ?"
                   " ORDER BY lease_expires_at LIMIT ?", (0, 10)),
    }
    expected = {"claim": "jobs USING INDEX jobs_claim (queue_name=? AND grp=?)",
                "group claim": "jobs USING INDEX jobs_claim (queue_name=? AND grp=?)",
                "group turn": "job_groups USING INDEX job_groups_turn (queue_name=? AND (pass,due_at,grp)>(?,?,?))",
                "retention": "jobs USING INDEX jobs_finished (status=? AND completed_at<?)",
                "expiry": "jobs USING INDEX jobs_lease_expiry"}
    for name, (sql, args) in plans.items():
        detail = " | ".join(str(r[3]) for r in store.conn.execute("EXPLAIN QUERY PLAN " + sql, args))
        assert detail.replace("COVERING INDEX", "INDEX").startswith("SEARCH " + expected[name]), (name, detail)
        assert "SCAN" not in detail and "TEMP B-TREE" not in detail, (name, detail)


def test_queue_depths_count_live_jobs_through_the_partial_indexes(store: Store) -> None:
    enqueue(store, spec("a"), spec("a"), spec("a", run_at=NOW + 10 * SECOND), spec("b"))
    claimed = claim(store, ("a",), 1, now=NOW + 2 * SECOND)
    assert len(claimed) == 1
    completed_job(store, queue="c")  # finished jobs are not counted at all
    depths = {d.queue: d for d in store.queue_depths(NOW + 4 * SECOND)}
    assert set(depths) == {"a", "b"}
    a, b = depths["a"], depths["b"]
    assert (a.ready, a.scheduled, a.running, a.oldest_ready_age_seconds) == (1, 1, 1, 4.0)
    assert (b.ready, b.scheduled, b.running, b.oldest_ready_age_seconds) == (1, 0, 0, 4.0)
    plans = [
        " | ".join(str(r[3]) for r in store.conn.execute("EXPLAIN QUERY PLAN " + sql, args))
        for sql, args in (
            ("SELECT queue_name, sum(run_at <= ?1) FROM jobs WHERE status = 'pending' GROUP BY queue_name", (0,)),
            ("SELECT queue_name, count(*) FROM jobs WHERE status = 'running' GROUP BY queue_name", ()),
        )
    ]
    assert "INDEX jobs_claim" in plans[0] and "INDEX jobs_lease_expiry" in plans[1], plans


def test_bulk_retry_and_cancel_select_by_queue_state_and_creation_time_in_bounded_batches(store: Store) -> None:
    from edgeq_server.models import Selection

    early = [add(store, "b", now=NOW + i) for i in range(3)]
    late = [add(store, "b", now=NOW + 10 * SECOND + i) for i in range(2)]
    other = add(store, "c")
    running = claim(store, ("b",), limit=1, now=NOW + 20 * SECOND)  # early[0]
    assert [j.id for j in running] == [early[0]]

    # CancelJobs: PENDING by default, in batches of `limit`, oldest first.
    pending = Selection("b", JobState.PENDING, None, None)
    first = write(store, lambda: store.cancel_many(pending, 2, NOW + 21 * SECOND))
    assert [j.id for j in first.jobs] == early[1:3] and first.more and first.ended == []
    assert all(j.state is JobState.CANCELLED for j in first.jobs)
    rest = write(store, lambda: store.cancel_many(pending, 2, NOW + 21 * SECOND))
    assert [j.id for j in rest.jobs] == late and not rest.more
    assert write(store, lambda: store.cancel_many(pending, 2, NOW + 21 * SECOND)).jobs == []
    # RUNNING on request: its lease ends (the dispatcher is told through `ended`).
    run = write(store, lambda: store.cancel_many(Selection("b", JobState.RUNNING, None, None), 10, NOW + 22 * SECOND))
    assert run.ended == [early[0]] and store.get_job(early[0]).state is JobState.CANCELLED  # type: ignore[union-attr]
    assert store.get_job(other).state is JobState.PENDING  # type: ignore[union-attr]

    # RetryJobs on CANCELLED ones created in [NOW + 1 s, NOW + 11 s): the late two only.
    window = Selection("b", JobState.CANCELLED, NOW + SECOND, NOW + 11 * SECOND)
    again = write(store, lambda: store.retry_many(window, 10, NOW + 30 * SECOND))
    assert sorted(j.id for j in again.jobs) == sorted(late) and not again.more
    assert all((j.state, j.attempts, j.run_at) == (JobState.PENDING, 0, NOW + 30 * SECOND) for j in again.jobs)
    failed = write(store, lambda: store.retry_many(Selection("b", JobState.FAILED, None, None), 10, NOW))
    assert failed.jobs == [] and not failed.more


def test_unique_jobs_by_state_return_the_active_job_and_free_the_key_when_it_finishes(store: Store) -> None:
    active = spec("u", unique_key="report-42")  # uniqueness ACTIVE (the default)
    first = enqueue(store, active)[0]
    assert not first.duplicate
    again = enqueue(store, spec("u", b"other payload", unique_key="report-42"))[0]
    assert (again.job_id, again.duplicate) == (first.job_id, True)
    assert enqueue(store, spec("other-queue", unique_key="report-42"))[0].duplicate is False  # per queue
    # Two in one batch: the second is the first.
    batch = enqueue(store, spec("u", unique_key="k2"), spec("u", unique_key="k2"))
    assert batch[1].job_id == batch[0].job_id and batch[1].duplicate
    # RUNNING still blocks under ACTIVE; PENDING uniqueness lets the next one in.
    (running,) = claim(store, ("u",), limit=1)
    assert running.id == first.job_id and running.unique_key == "report-42"
    assert enqueue(store, spec("u", unique_key="report-42"))[0].job_id == first.job_id
    debounce = JobSpec("u", b"x", None, 3, unique_key="report-42", unique_running=False)
    queued = enqueue(store, debounce)[0]
    assert not queued.duplicate and queued.job_id != first.job_id
    assert enqueue(store, debounce)[0].job_id == queued.job_id  # one PENDING per key
    # Once the first finishes, ACTIVE sees only the pending one.
    write(store, lambda: store.cancel(first.job_id, NOW))
    assert enqueue(store, spec("u", unique_key="report-42"))[0].job_id == queued.job_id
    write(store, lambda: store.cancel(queued.job_id, NOW))
    fresh = enqueue(store, spec("u", unique_key="report-42"))[0]
    assert not fresh.duplicate and fresh.job_id not in (first.job_id, queued.job_id)
    # A sender-chosen id (an edge node's) that meets an active job becomes its alias.
    edge_id = "01890a5d-ac96-774b-bcce-b302099a8057"
    from_edge = JobSpec("u", b"x", None, 3, job_id=edge_id, unique_key="report-42")
    assert enqueue(store, from_edge)[0].job_id == fresh.job_id
    by_alias = store.get_job(edge_id)
    assert by_alias is not None and by_alias.id == fresh.job_id


def test_heartbeat_stores_progress_of_live_leases_only_and_keeps_it_after_the_job_ends(store: Store) -> None:
    job_id = add(store, "p")
    (job,) = claim(store, ("p",))
    live = ref(job)
    out = write(store, lambda: store.heartbeat([live], None, NOW + 1, {0: (40.0, "rows 400/1000")}))
    assert out[0].outcome is LeaseOutcome.OK
    got = get(store, job_id)
    assert (got.progress, got.progress_message) == (40.0, "rows 400/1000")
    # A heartbeat without a report leaves it; a report with no message clears the message.
    write(store, lambda: store.heartbeat([live], None, NOW + 2))
    assert get(store, job_id).progress == 40.0
    write(store, lambda: store.heartbeat([live], None, NOW + 3, {0: (90.5, "")}))
    assert (get(store, job_id).progress, get(store, job_id).progress_message) == (90.5, None)
    write(store, lambda: store.ack([AckItem(live, None)], NOW + 4))
    before = rows(store)
    stale = write(store, lambda: store.heartbeat([live], None, NOW + 5, {0: (1.0, "late")}))
    assert stale[0].outcome is LeaseOutcome.STALE and rows(store) == before  # a stale report changes nothing
    assert get(store, job_id).progress == 90.5  # kept on the finished job


def test_a_rate_limit_gives_whole_tokens_refills_evenly_and_says_when_to_look_again(store: Store) -> None:
    for _ in range(30):
        add(store, "rl")
    add(store, "free")
    write(store, lambda: store.set_rate_limit("rl", 10, SECOND, NOW))  # 10 a second, bursts of 10
    throttled: dict[str, int] = {}
    first = write(store, lambda: store.claim(["rl", "free"], 100, "w", 30 * SECOND, NOW, throttled))
    assert sum(j.queue == "rl" for j in first) == 10 and sum(j.queue == "free" for j in first) == 1
    assert throttled == {"rl": NOW + SECOND // 10}  # the next token, a tenth of a second on
    throttled.clear()
    assert write(store, lambda: store.claim(["rl"], 100, "w", 30 * SECOND, NOW + SECOND // 20, throttled)) == []
    assert throttled == {"rl": NOW + SECOND // 10}
    half = write(store, lambda: store.claim(["rl"], 100, "w", 30 * SECOND, NOW + SECOND // 2))
    assert len(half) == 5  # 0.5 s of refill
    later = write(store, lambda: store.claim(["rl"], 100, "w", 30 * SECOND, NOW + 60 * SECOND))
    assert len(later) == 10  # a long pause refills to the burst, not beyond
    (stats,) = store.queue_stats(["rl"], NOW + 60 * SECOND)
    assert (stats.rate_jobs, stats.rate_period_us, stats.rate_limited) == (10, SECOND, True)
    write(store, lambda: store.set_rate_limit("rl", 0, 0, NOW + 60 * SECOND))  # removed
    assert len(write(store, lambda: store.claim(["rl"], 100, "w", 30 * SECOND, NOW + 60 * SECOND))) == 5


def test_concurrency_per_key_leases_at_most_k_in_order_and_others_go_past_a_busy_key(store: Store) -> None:
    def keyed(key: str, n: int, limit: int = 1) -> list[str]:
        out = []
        for i in range(n):
            res = enqueue(store, JobSpec("ck", b"%d" % i, None, 3, concurrency_key=key, concurrency_limit=limit))
            out.append(res[0].job_id)
        return out

    a = keyed("acct-a", 3)  # one at a time
    b = keyed("acct-b", 3, limit=2)  # two at a time
    free = add(store, "ck")
    waiting: set[str] = set()
    first = write(store, lambda: store.claim(["ck"], 100, "w", 30 * SECOND, NOW, None, waiting))
    assert [j.id for j in first] == [a[0], b[0], b[1], free] and waiting == {"ck"}
    assert first[0].concurrency_key == "acct-a" and first[1].concurrency_limit == 2
    # Nothing more while they run; acking a's job lets a's next one (in order) go.
    assert write(store, lambda: store.claim(["ck"], 100, "w", 30 * SECOND, NOW)) == []
    write(store, lambda: store.ack([AckItem(ref(first[0]), b"")], NOW))
    assert [j.id for j in write(store, lambda: store.claim(["ck"], 100, "w", 30 * SECOND, NOW))] == [a[1]]


def test_a_long_backlog_of_a_busy_key_does_not_hide_other_keys(store: Store) -> None:
    specs = [JobSpec("hol", b"x", None, 3, concurrency_key="big") for _ in range(600)]
    for i in range(0, 600, 100):
        enqueue(store, *specs[i:i + 100])
    other = enqueue(store, JobSpec("hol", b"y", None, 3, concurrency_key="small"))[0].job_id
    (big,) = write(store, lambda: store.claim(["hol"], 1, "w", 30 * SECOND, NOW))
    assert big.concurrency_key == "big"
    # 599 of "big" wait at the head of the claim order; "small" is found past them.
    waiting: set[str] = set()
    got = write(store, lambda: store.claim(["hol"], 10, "w", 30 * SECOND, NOW, None, waiting))
    assert [j.id for j in got] == [other] and waiting == {"hol"}


# ================================================================== fair groups


def grouped(
    store: Store, queue: str, group: str, n: int, now: int = NOW, run_at: int | None = None, **kw: Any
) -> list[str]:
    """Enqueue ``n`` jobs of one group (in batches, as producers do); return their ids."""
    out: list[str] = []
    for i in range(0, n, 500):
        batch = [JobSpec(queue, b"%d" % j, run_at, 3, group=group, **kw) for j in range(i, min(n, i + 500))]
        out.extend(r.job_id for r in enqueue(store, *batch, now=now))
    return out


def claim_groups(store: Store, queue: str, n: int, now: int = NOW, per_claim: int = 1) -> list[str]:
    """The groups of the next ``n`` jobs leased, ``per_claim`` at a time, each acked at once."""
    out: list[str] = []
    while len(out) < n:
        got = write(store, lambda: store.claim([queue], min(per_claim, n - len(out)), "w", 30 * SECOND, now))
        if not got:
            break
        items = [AckItem(ref(j), b"") for j in got]
        write(store, lambda: store.ack(items, now))  # noqa: B023 (runs at once)
        out.extend(j.group for j in got)
    return out


@pytest.mark.parametrize("per_claim", [1, 7])
def test_fair_groups_take_turns_so_a_burst_does_not_starve_a_small_tenant(store: Store, per_claim: int) -> None:
    grouped(store, "fair", "big", 2000)
    small = grouped(store, "fair", "small", 10)
    got = claim_groups(store, "fair", 20, per_claim=per_claim)
    # Enqueued after 2,000 of "big", "small"'s 10 jobs are all among the first 20 leased.
    assert got.count("small") == 10 and got.count("big") == 10
    assert {get(store, j).state for j in small} == {JobState.COMPLETED}
    # Then "big" has the queue to itself, in its own FIFO order.
    rest = write(store, lambda: store.claim(["fair"], 5, "w", 30 * SECOND, NOW))
    assert [j.group for j in rest] == ["big"] * 5
    assert [int(j.payload) for j in rest] == list(range(10, 15))


def test_group_weights_share_the_turns_in_proportion(store: Store) -> None:
    grouped(store, "w", "gold", 300)
    grouped(store, "w", "bronze", 300)
    write(store, lambda: store.set_group_weight("w", "gold", 3, NOW))
    got = claim_groups(store, "w", 80, per_claim=8)
    assert (got.count("gold"), got.count("bronze")) == (60, 20)
    groups, more = store.list_groups("w", None, 10, NOW)
    assert [(g.group, g.weight, g.pending, g.running) for g in groups] == [
        ("bronze", 1, 280, 0), ("gold", 3, 240, 0)] and not more  # the idle default group is not listed


def test_jobs_without_a_group_form_the_default_group_and_priority_orders_within_a_group(store: Store) -> None:
    plain = [add(store, "mix") for _ in range(3)]  # before the queue had groups
    grouped(store, "mix", "t1", 3)
    urgent = enqueue(store, JobSpec("mix", b"u", None, 3, group="t1", priority=5))[0].job_id
    got = write(store, lambda: store.claim(["mix"], 4, "w", 30 * SECOND, NOW))
    assert sorted(j.group for j in got) == ["", "", "t1", "t1"]
    assert urgent in [j.id for j in got] and plain[0] in [j.id for j in got]
    (stats,) = store.queue_stats(["mix"], NOW)
    assert stats.groups == 2 and stats.pending == 3


def test_a_group_that_comes_back_after_idling_gets_no_saved_up_burst(store: Store) -> None:
    grouped(store, "idle", "a", 400)
    grouped(store, "idle", "b", 1)
    assert sorted(claim_groups(store, "idle", 2)) == ["a", "b"]
    claim_groups(store, "idle", 100)  # "a" alone for 100 leases; "b" has nothing
    grouped(store, "idle", "b", 100)
    # "b" starts where the queue's turns are, not 100 turns behind: they alternate.
    got = claim_groups(store, "idle", 20, per_claim=4)
    assert got.count("b") == 10


def test_a_group_whose_jobs_come_back_pending_is_served_again(store: Store) -> None:
    grouped(store, "back", "a", 50)
    (b1,) = grouped(store, "back", "b", 1)
    first = write(store, lambda: store.claim(["back"], 2, "w", 30 * SECOND, NOW))
    job_b = next(j for j in first if j.group == "b")
    claim_groups(store, "back", 3)  # "b" is found empty: its due_at is cleared
    assert store.conn.execute("SELECT due_at FROM job_groups WHERE grp = 'b'").get is None
    nack(store, ref(job_b), NOW, delay=5 * SECOND)  # back to PENDING, in 5 s
    assert "b" not in claim_groups(store, "back", 3, now=NOW + SECOND)
    assert "b" in claim_groups(store, "back", 2, now=NOW + 6 * SECOND)
    # A lease that lapses returns its job to its group as well.
    (again,) = grouped(store, "back", "c", 1, now=NOW + 6 * SECOND)
    got = write(store, lambda: store.claim(["back"], 2, "w", SECOND, NOW + 6 * SECOND))
    assert again in [j.id for j in got]
    claim_groups(store, "back", 4, now=NOW + 6 * SECOND)
    expire(store, NOW + 8 * SECOND)
    assert "c" in claim_groups(store, "back", 2, now=NOW + 8 * SECOND)
    assert get(store, b1).attempts == 2


def test_idle_groups_are_pruned_and_come_back_when_a_job_of_theirs_is_pending_again(store: Store) -> None:
    grouped(store, "pr", "a", 3)
    grouped(store, "pr", "gone", 1)
    write(store, lambda: store.set_group_weight("pr", "heavy", 5, NOW))
    got = write(store, lambda: store.claim(["pr"], 2, "w", 30 * SECOND, NOW))
    job = next(j for j in got if j.group == "gone")
    claim_groups(store, "pr", 2)  # a claim finds "gone" with nothing pending (its turn came)
    assert write(store, lambda: store.prune_groups(100)) == 1  # "gone" only: "a" waits, "heavy" has a weight
    names = [g.group for g in store.list_groups("pr", None, 10, NOW)[0]]
    assert names == ["a", "heavy"]
    nack(store, ref(job), NOW)  # its one job back to PENDING: the group is there again
    assert "gone" in claim_groups(store, "pr", 2)


def test_scheduled_jobs_of_a_group_wait_for_their_time_without_blocking_others(store: Store) -> None:
    grouped(store, "sch", "later", 5, run_at=NOW + 60 * SECOND)
    grouped(store, "sch", "now", 3)
    assert claim_groups(store, "sch", 10) == ["now"] * 3
    assert claim_groups(store, "sch", 10, now=NOW + 61 * SECOND) == ["later"] * 5


def test_groups_combine_with_concurrency_keys_and_rate_limits(store: Store) -> None:
    grouped(store, "combo", "a", 5, concurrency_key="k")
    grouped(store, "combo", "b", 5)
    waiting: set[str] = set()
    got = write(store, lambda: store.claim(["combo"], 6, "w", 30 * SECOND, NOW, None, waiting))
    # "a"'s key lets one run; "b" takes the other turns.
    assert sorted(j.group for j in got) == ["a"] + ["b"] * 5 and waiting == {"combo"}
    grouped(store, "rl2", "x", 20)
    grouped(store, "rl2", "y", 20)
    write(store, lambda: store.set_rate_limit("rl2", 4, SECOND, NOW))
    throttled: dict[str, int] = {}
    got = write(store, lambda: store.claim(["rl2"], 100, "w", 30 * SECOND, NOW, throttled))
    assert sorted(j.group for j in got) == ["x", "x", "y", "y"] and throttled["rl2"] > NOW


def test_a_grouped_queue_and_a_plain_one_share_a_claim(store: Store) -> None:
    grouped(store, "gq", "a", 3)
    grouped(store, "gq", "b", 3)
    plain = [add(store, "pq") for _ in range(3)]
    got = write(store, lambda: store.claim(["gq", "pq"], 4, "w", 30 * SECOND, NOW))
    assert len(got) == 4 and {j.id for j in got if j.queue == "pq"} <= set(plain)
    gq = [j.group for j in got if j.queue == "gq"]
    assert abs(gq.count("a") - gq.count("b")) <= 1
    # The turns charged are the ones taken: what the limit cut off is not charged.
    passes = dict(store.conn.execute("SELECT grp, pass FROM job_groups WHERE queue_name = 'gq'").fetchall())
    assert sum(passes.values()) == len(gq)


def test_ten_thousand_groups_each_get_one_turn_before_any_gets_a_second(store: Store) -> None:
    specs = [JobSpec("many", b"x", None, 3, group=f"t{i:05d}") for i in range(10_000) for _ in range(2)]
    for i in range(0, len(specs), 1000):
        enqueue(store, *specs[i:i + 1000])
    seen: list[str] = []
    for _ in range(1000):
        seen.extend(j.group for j in write(store, lambda: store.claim(["many"], 10, "w", 30 * SECOND, NOW)))
    assert len(seen) == 10_000 and len(set(seen)) == 10_000  # one each, then the second round
    assert len(set(claim_groups(store, "many", 100, per_claim=10))) == 100
    (stats,) = store.queue_stats(["many"], NOW)
    assert stats.groups == 9_900  # the 100 groups served twice have nothing pending


# ============================================================ per-key rate limits


def test_a_rate_limit_per_key_gives_each_header_value_its_own_bucket(store: Store) -> None:
    def jobs(customer: str | None, n: int) -> list[str]:
        headers = {"customer": customer} if customer else {}
        return [r.job_id for r in enqueue(store, *[JobSpec("kr", b"x", None, 3, headers=headers) for _ in range(n)])]

    a, b, free = jobs("a", 5), jobs("b", 5), jobs(None, 2)
    write(store, lambda: store.set_rate_limit("kr", 2, SECOND, NOW, "customer"))
    throttled: dict[str, int] = {}
    got = [j.id for j in write(store, lambda: store.claim(["kr"], 100, "w", 30 * SECOND, NOW, throttled))]
    assert got == a[:2] + b[:2] + free  # FIFO within a key; jobs without the header are not limited
    assert throttled == {"kr": NOW + SECOND // 2}  # a's and b's next token
    assert write(store, lambda: store.claim(["kr"], 100, "w", 30 * SECOND, NOW + SECOND // 4)) == []
    got = [j.id for j in write(store, lambda: store.claim(["kr"], 100, "w", 30 * SECOND, NOW + SECOND // 2))]
    assert got == [a[2], b[2]]
    (stats,) = store.queue_stats(["kr"], NOW)
    assert stats.key_rate is not None and (stats.key_rate.header, stats.key_rate.jobs) == ("customer", 2)
    assert stats.rate_jobs == 0  # the queue-wide limit is another one
    assert stats.rate_limited  # a's and b's jobs wait for their keys' tokens
    assert not store.queue_stats(["kr"], NOW + 2 * SECOND)[0].rate_limited  # refilled
    # Refilled buckets are forgotten (a missing row is a full bucket); removing the limit frees all.
    assert write(store, lambda: store.prune_rate_keys(NOW + SECOND // 2, 100)) == 0
    assert write(store, lambda: store.prune_rate_keys(NOW + 2 * SECOND, 100)) == 2
    write(store, lambda: store.set_rate_limit("kr", 0, 0, NOW + 2 * SECOND, "customer"))
    got = [j.id for j in write(store, lambda: store.claim(["kr"], 100, "w", 30 * SECOND, NOW + 2 * SECOND))]
    assert got == a[3:] + b[3:]
    assert store.queue_stats(["kr"], NOW)[0].key_rate is None


def test_a_per_key_rate_limit_and_a_queue_wide_one_both_apply_and_only_taken_jobs_spend(store: Store) -> None:
    specs = [JobSpec("kw", b"x", None, 3, headers={"k": k}) for k in "aaabbb"]
    ids_ = [r.job_id for r in enqueue(store, *specs)]
    write(store, lambda: store.set_rate_limit("kw", 2, SECOND, NOW, "k"))
    write(store, lambda: store.set_rate_limit("kw", 3, SECOND, NOW))
    throttled: dict[str, int] = {}
    got = [j.id for j in write(store, lambda: store.claim(["kw"], 100, "w", 30 * SECOND, NOW, throttled))]
    assert got == ids_[:2] + ids_[3:4]  # 3 in all (queue-wide), at most 2 per key
    # b spent one token only: the one job taken, not the one the queue-wide limit cut off.
    assert store.conn.execute("SELECT key, tokens FROM rate_keys ORDER BY key").fetchall() == [("a", 0.0), ("b", 1.0)]


def test_a_per_key_rate_limit_in_a_grouped_queue_holds_back_only_that_key(store: Store) -> None:
    for g in ("t1", "t2"):
        enqueue(store, *[JobSpec("kg", b"x", None, 3, group=g, headers={"api": g}) for _ in range(100)])
    write(store, lambda: store.set_rate_limit("kg", 1, SECOND, NOW, "api"))
    throttled: dict[str, int] = {}
    got = write(store, lambda: store.claim(["kg"], 10, "w", 30 * SECOND, NOW, throttled))
    assert sorted(j.group for j in got) == ["t1", "t2"] and throttled["kg"] == NOW + SECOND


def test_a_long_backlog_of_a_throttled_key_does_not_hide_another_key(store: Store) -> None:
    for i in range(0, 300, 100):
        enqueue(store, *[JobSpec("hot", b"%d" % (i + j), None, 3, headers={"k": "hot"}) for j in range(100)])
    cold = enqueue(store, JobSpec("hot", b"c", None, 3, headers={"k": "cold"}))[0].job_id
    write(store, lambda: store.set_rate_limit("hot", 1, SECOND, NOW, "k"))
    got = write(store, lambda: store.claim(["hot"], 5, "w", 30 * SECOND, NOW))
    # Past the window of held "hot" jobs (one token), "cold" is found.
    assert [j.headers["k"] for j in got] == ["hot", "cold"] and got[1].id == cold
    # In a grouped queue a group passes over at most GATE_SKIPS held jobs per claim.
    enqueue(store, *[JobSpec("hg", b"x", None, 3, group="a", headers={"k": "hot"}) for _ in range(200)])
    enqueue(store, JobSpec("hg", b"y", None, 3, group="b"))
    write(store, lambda: store.set_rate_limit("hg", 1, SECOND, NOW, "k"))
    got = write(store, lambda: store.claim(["hg"], 5, "w", 30 * SECOND, NOW))
    assert sorted(j.group for j in got) == ["a", "b"]
