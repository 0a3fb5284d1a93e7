"""Builders for store-level tests: a fixed clock, job specs, and one-call wrappers that run
a store write in its own transaction (the writer thread does that in the server)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from edgeq_server import db, ids
from edgeq_server.models import EnqueueResult, Job, JobSpec
from edgeq_server.store import Store
from edgeq_server.tokens import LeaseRef

T = TypeVar("T")

#: The fixed "now" of store tests, in microseconds (2027-01-15).
NOW = 1_800_000_000_000_000
SECOND = 1_000_000
LEASE = 30 * SECOND


def open_store(path: str) -> Store:
    """A migrated writer connection on a real SQLite file."""
    conn = db.connect(path, writer=True)
    db.migrate(conn)
    return Store(conn)


def write(store: Store, fn: Callable[[], T]) -> T:
    """Run ``fn`` in one transaction: commit if it returns, roll back if it raises."""
    store.begin()
    try:
        result = fn()
    except BaseException:
        store.rollback()
        raise
    store.commit()
    return result


def spec(
    queue: str = "q",
    payload: bytes = b"x",
    *,
    run_at: int | None = None,
    max_attempts: int = 3,
    priority: int = 0,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    unique_key: str | None = None,
) -> JobSpec:
    return JobSpec(queue, payload, run_at, max_attempts, priority, key, dict(headers or {}), unique_key=unique_key)


def new_ids(n: int = 1000) -> Iterable[str]:
    return (ids.uuid7() for _ in range(n))


def enqueue(store: Store, *specs: JobSpec, now: int = NOW) -> list[EnqueueResult]:
    return write(store, lambda: store.enqueue(list(specs), now, new_ids()))


def add(store: Store, queue: str = "q", *, now: int = NOW, **kw: Any) -> str:
    """Enqueue one job; return its id."""
    return enqueue(store, spec(queue, **kw), now=now)[0].job_id


def claim(
    store: Store,
    queues: Iterable[str] = ("q",),
    limit: int = 1,
    *,
    now: int = NOW,
    lease_us: int = LEASE,
    worker: str = "w1",
) -> list[Job]:
    return write(store, lambda: store.claim(list(queues), limit, worker, lease_us, now))


def claim_one(store: Store, queue: str = "q", **kw: Any) -> Job:
    jobs = claim(store, (queue,), 1, **kw)
    assert len(jobs) == 1, jobs
    return jobs[0]


def ref(job: Job) -> LeaseRef:
    assert job.lease_id is not None
    return LeaseRef(job.id, job.lease_id)


def get(store: Store, job_id: str) -> Job:
    job = store.get_job(job_id)
    assert job is not None, job_id
    return job


def rows(store: Store) -> list[tuple[Any, ...]]:
    """Every stored column of every job (lease_us included): for "nothing changed" checks."""
    return [tuple(r) for r in store.conn.execute("SELECT * FROM jobs ORDER BY rowid")]
