"""The edge log: Enqueues acknowledged by this node before the primary has them.

One file per node (``Config.edge_log``: a SQLite file outside the LiteFS mount, fsynced on
every commit) and one path through it, used two ways:

- ``durability = edge`` (the server's ``--durability`` or the request's): every Enqueue is
  accepted here, on a replica and on the primary alike, and answered as soon as its row is
  durable: ``accepted_at_edge`` (and ``buffered``), ``accepted_by`` this node, the job ids,
  no txid.
- the partition outbox (``--outbox-path``): a "local"/"replicated" Enqueue on a node that
  cannot reach the primary in ``outbox_forward_timeout_seconds`` is accepted here instead
  of failing; while anything from it is waiting, later ones queue behind it (order).

Accepting (``accept``): validate exactly as the primary would (a bad request is refused
here, naming the field, and nothing is stored); give every job its id (UUIDv7) and turn a
``delay`` into an absolute ``run_at`` (the delay counts from acceptance, not from the
drain); then hand the request to the group commit, which appends every request waiting
for it in one transaction (one fsync for many callers). Inside that transaction a job
whose (queue, idempotency key) this node already accepted, or its database already holds,
is answered with that job's id (``duplicate``) and not appended again. Past
``edge_log_max_bytes`` (or on a full disk) Enqueue answers RESOURCE_EXHAUSTED
(``EDGE_LOG_FULL``) with a retry delay: never unbounded disk, never a silent drop.

Draining (``drain_loop``, supervised): the oldest waiting requests are merged into one
Enqueue of up to ``max_batch`` jobs (many callers' jobs per call, acceptance order kept, so
per-queue order holds) and stored on the primary with ``edge_drain_durability``: over
gRPC from a replica, directly through the local write path on the primary (many
single-job Enqueues, one LiteFS transaction). Rows leave the line only after the primary's
OK, in the same transaction that records each job's stored id and txid. The primary
dedupes by job id, so a resend after a lost answer, a kill -9, a SIGSTOP past the deadline
or a failover stores nothing twice. Transient answers (UNAVAILABLE, deadline, ABORTED...)
back off with jitter, 0.1 s doubling to 2 s, reset by a success or a new primary. A
permanent refusal of a merged batch re-sends its requests one by one; a single request
refused for good (or INTERNAL/UNKNOWN ``INTERNAL_ATTEMPTS`` times) moves to the dead table
(the row stays with the reason), is logged and counted, and the rows behind it go on.

Offering again (``_reoffer``): a drained request stays in the file, marked drained, for
``edge_log_keep_seconds`` (at most the shortest retention, so a job deleted by retention
is never brought back). When this node starts, and whenever it sees a primary other than
the last one it saw, the requests drained within that window are put back in line and sent
to the new primary, which stores the ones it lacks and answers the others as duplicates.
Why: LiteFS gives the lease to whichever candidate takes the Consul lock first; a replica
that was down and restarts just before the primary dies can win without the primary's last
transactions, and they are then gone from every node (the others are re-snapshotted from
it), "replicated" ones included. The edge logs that accepted those jobs still hold them.

Reading (``find``): until this node's database has applied the drained txid, the log
remembers each drained job's stored id and txid, so GetJob here never loses sight of a
job between the edge and the replica (read-your-writes across the hand-over).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import apsw
import grpc
from google.protobuf import timestamp_pb2

from edgeq.v1 import queue_pb2 as pb

from .. import metrics, status, validate
from ..clock import MICROS, Clock
from ..config import Config
from ..errors import Forwarded, ResourceExhausted, Unavailable
from ..ids import uuid7
from ..store import EdgeJob, EdgeLogStore, EdgeRow, Store
from .forward import Forwarder
from .litefs import LiteFSNode

log = logging.getLogger(__name__)

#: Deadline of one drain call, and the backoff between failed drain attempts.
DRAIN_TIMEOUT_SECONDS = 5.0
RETRY_MIN_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0
#: INTERNAL/UNKNOWN answers for one request before it is dead.
INTERNAL_ATTEMPTS = 5
#: The window of GetNodeInfo's drain rate.
RATE_WINDOW_SECONDS = 10.0
#: How often records of drained jobs this node has applied are forgotten.
FORGET_SECONDS = 1.0
#: Retry hint of a full edge log.
FULL_RETRY_SECONDS = 1.0
#: Under sustained traffic (the previous drain call ended less than this ago), how long the
#: drain lets the oldest job of a small batch wait for more: each drained batch costs a
#: LiteFS transaction and a replication round trip, so batching keeps the drain cheap; the
#: wait adds at most this to the drain lag. After a quiet spell a job is sent at once.
LINGER_SECONDS = 0.010
#: A request that finds the log idle this long commits on the event loop itself.
INLINE_IDLE_SECONDS = 0.001
#: Keys the SDKs generate for jobs sent without one (unique per call).
AUTO_KEY_PREFIX = "auto-"

#: Answers after which the same request is sent again later.
TRANSIENT = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED, grpc.StatusCode.UNAUTHENTICATED,
})
#: Answers that may be transient, tried ``INTERNAL_ATTEMPTS`` times.
DOUBTFUL = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})

Ctx = grpc.aio.ServicerContext[Any, Any]
#: Stores a merged request on this node (the primary) and waits for its durability.
StoreHere = Callable[[pb.EnqueueRequest], Awaitable[pb.EnqueueResponse]]


@dataclass
class _Pending:
    """A request waiting for the group commit, and the ids its keys have in this node's
    database."""

    request: pb.EnqueueRequest
    stored: dict[tuple[str, str], str]
    future: asyncio.Future[list[tuple[str, bool]]]


class EdgeLog:
    def __init__(
        self, cfg: Config, clock: Clock, node: LiteFSNode, forwarder: Forwarder,
        metadata: tuple[tuple[str, str], ...], db_path: str,
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self._node = node
        self._forwarder = forwarder
        self._metadata = metadata  # node-to-node credentials for the drain
        self._db_path = db_path
        self.path = cfg.edge_log
        self.fallback = bool(cfg.outbox_path)
        self.capacity = cfg.edge_log_max_bytes
        self._drain_durability = (
            pb.DURABILITY_REPLICATED if cfg.edge_drain_durability == "replicated" else pb.DURABILITY_LOCAL
        )
        # Three connections to the file (WAL: readers never block the writer), each owned
        # by one thread: every write (appends, the drain's deletes) on the edge-log thread, so
        # an fsync never blocks the event loop and requests that arrive meanwhile go into
        # the next commit (group commit); the drain's batch reads and decoding on the drain
        # thread; point reads (GetJob, GetQueueStats) on the event loop. Keys already stored
        # are looked up in this node's database (a FUSE read) on a fourth thread.
        self._store: EdgeLogStore | None = None
        self._reader: EdgeLogStore | None = None
        self._reads: EdgeLogStore | None = None
        self._db: Store | None = None  # this node's database, read-only: keys already stored
        self._write_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="edge-log")
        self._drain_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="edge-log-drain")
        self._keys_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="edge-log-keys")
        self._flusher: asyncio.Task[None] | None = None
        self._writing = 0  # jobs on the edge-log thread (the loop may commit only at 0)
        self._last_commit = 0.0
        self._waiting: list[_Pending] = []
        self._wake = asyncio.Event()
        self.store_here: StoreHere | None = None
        # Exact counters of waiting rows (the group commit and the drain move them).
        self.pending = 0  # requests
        self.jobs = 0
        self.bytes = 0
        self.dead = 0
        self.oldest_at: int | None = None  # created_at of the oldest waiting request
        self._drained: collections.deque[tuple[float, int]] = collections.deque()
        self._forget_at = 0.0
        self._unforgotten = False
        self._kept = 0  # drained requests kept to offer again
        self._offered_to: str | None = None  # the primary the kept requests were last offered to
        self.keep_seconds = min(
            cfg.edge_log_keep_seconds, cfg.retention_completed_seconds, cfg.retention_failed_seconds,
            cfg.retention_cancelled_seconds,
        )

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        self._store = await self._in(self._write_thread, lambda: EdgeLogStore(self.path))
        self._reader = await self._in(self._drain_thread, lambda: EdgeLogStore(self.path))
        self._reads = reads = EdgeLogStore(self.path)
        self.pending, self.jobs, self.bytes, self.dead, self.oldest_at = reads.totals()
        self._unforgotten = True
        self._publish()
        metrics.EDGE_LOG_OLDEST_AGE.set_function(self.oldest_age)
        log.info("edge log %s: %d job(s) waiting to drain, %d refused request(s)", self.path, self.jobs, self.dead)
        if self.pending:
            self._wake.set()

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._reader is not None:
            await self._in(self._drain_thread, self._reader.close)
        if self._db is not None:
            await self._in(self._keys_thread, self._db.conn.close)
        store, self._store = self._store, None
        if store is not None:
            await self._in(self._write_thread, store.close)
        if self._reads is not None:
            self._reads.close()
            self._reads = None
        for thread in (self._write_thread, self._drain_thread, self._keys_thread):
            thread.shutdown(wait=True)

    @staticmethod
    async def _in(thread: concurrent.futures.ThreadPoolExecutor, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(thread, fn)

    async def _write(self, fn: Callable[[EdgeLogStore], Any]) -> Any:
        """Run ``fn`` with the writing connection on the edge-log thread."""
        store = self._store
        if store is None:
            raise Unavailable("the edge log is closed", reason="DRAINING")
        self._writing += 1
        try:
            return await self._in(self._write_thread, lambda: fn(store))
        finally:
            self._writing -= 1

    @property
    def store(self) -> EdgeLogStore:
        """The connection for point reads on the event loop."""
        if self._reads is None:
            raise Unavailable("the edge log is closed", reason="DRAINING")
        return self._reads

    def _publish(self) -> None:
        metrics.EDGE_LOG_JOBS.set(self.jobs)
        metrics.EDGE_LOG_BYTES.set(self.bytes)
        metrics.BUFFER_PENDING.set(self.pending)
        metrics.BUFFER_DEAD.set(self.dead)

    # ------------------------------------------------------------------ state

    def accepting(self) -> bool:
        """Whether an Enqueue would be accepted now (open, under the cap)."""
        return self._store is not None and self.bytes < self.capacity

    def oldest_age(self) -> float:
        return 0.0 if self.oldest_at is None else max(0.0, (self._clock.now() - self.oldest_at) / MICROS)

    def drain_rate(self) -> float:
        """Jobs per second stored on the primary over the last ``RATE_WINDOW_SECONDS``."""
        cutoff = time.monotonic() - RATE_WINDOW_SECONDS
        while self._drained and self._drained[0][0] < cutoff:
            self._drained.popleft()
        return sum(n for _, n in self._drained) / RATE_WINDOW_SECONDS

    def find(self, job_id: str) -> EdgeJob | None:
        return self.store.find(job_id)

    def accepted_by_queue(self) -> dict[str, int]:
        return self.store.accepted_by_queue() if self.jobs else {}

    # ------------------------------------------------------------------ accepting

    async def accept(self, request: pb.EnqueueRequest) -> pb.EnqueueResponse:
        """Accept at the edge: durable here, stored on the primary by the drain."""
        now = self._clock.now()
        validate.enqueue(request, self._cfg, now)  # raises InvalidArgument naming the field
        edge = pb.EnqueueRequest()
        edge.CopyFrom(request)
        edge.ClearField("durability")
        for spec in edge.jobs:
            if not spec.job_id:
                spec.job_id = uuid7()
            if spec.HasField("delay"):  # the delay counts from now, not from the drain
                at = now + spec.delay.ToMicroseconds()
                spec.ClearField("delay")
                spec.run_at.CopyFrom(_timestamp(at))
        size = edge.ByteSize()
        if self._store is None:
            raise Unavailable("this node is shutting down; send to another node", reason="DRAINING", retry_after=0.2)
        if self.bytes + size > self.capacity:
            raise _full(f"the edge log holds {self.bytes} bytes, its cap is {self.capacity}")
        # Keys the caller chose may name a job this node's database already holds; a key
        # the SDKs generate (auto-...) is unique to one call, so only that call's own retry
        # can match, within seconds, at this node: the edge log itself answers for those.
        stored: dict[tuple[str, str], str] = {}
        keys = {(s.queue, s.idempotency_key) for s in edge.jobs if s.idempotency_key}
        checked = [k for k in keys if not k[1].startswith(AUTO_KEY_PREFIX)]
        if checked:
            stored = await self._in(self._keys_thread, lambda: self._stored(checked))
        pending = _Pending(edge, stored, asyncio.get_running_loop().create_future())
        self._waiting.append(pending)
        if self._flusher is None or self._flusher.done():
            if not self._writing and time.monotonic() - self._last_commit > INLINE_IDLE_SECONDS:
                # An idle log: commit right here, one fsync and no thread hand-offs (the
                # latency of a lone request). Under load the thread's group commit takes over.
                self._waiting.remove(pending)
                self._commit_here(pending)
            else:
                self._flusher = asyncio.ensure_future(self._flush())
        # A caller that goes away leaves a row that will drain (or nothing): the counters
        # agree with the file either way.
        answers = await asyncio.shield(pending.future)
        return pb.EnqueueResponse(
            results=[
                pb.EnqueueResult(job_id=job_id, duplicate=dup, idempotency_key=spec.idempotency_key)
                for (job_id, dup), spec in zip(answers, edge.jobs, strict=True)
            ],
            buffered=True, accepted_at_edge=True, accepted_by=self._cfg.address,
        )

    async def _flush(self) -> None:
        """The group commit: every request waiting, one durable transaction on the edge-log
        thread; requests that arrive meanwhile go into the next one."""
        while self._waiting:
            batch, self._waiting = self._waiting, []
            now = self._clock.now()
            try:
                outcome = await self._write(functools.partial(self._append, batch=batch, now=now))
            except Exception as exc:  # noqa: BLE001 - every caller of the commit hears it
                self._settle(batch, now, exc)
                continue
            self._settle(batch, now, outcome)

    def _commit_here(self, pending: _Pending) -> None:
        """Commit one request on the event loop (only while no write runs on the thread)."""
        now = self._clock.now()
        store = self._store
        assert store is not None
        try:
            outcome: Any = self._append(store, [pending], now)
        except Exception as exc:  # noqa: BLE001 - the caller hears it
            outcome = exc
        self._settle([pending], now, outcome)

    def _settle(self, batch: list[_Pending], now: int, outcome: Any) -> None:
        """Answer the callers of a commit (``outcome``: its result, or the exception)."""
        self._last_commit = time.monotonic()
        if isinstance(outcome, BaseException):
            if isinstance(outcome, apsw.FullError):
                outcome = _full("the disk holding the edge log is full")
            else:
                log.error("edge log: append failed: %r", outcome)
            _fail(batch, outcome)
            return
        for pending, (answers, appended, size) in zip(batch, outcome, strict=True):
            if appended:
                self.pending += 1
                self.jobs += appended
                self.bytes += size
                if self.oldest_at is None:
                    self.oldest_at = now
            if not pending.future.done():
                pending.future.set_result(answers)
        self._publish()
        self._wake.set()

    def _append(
        self, store: EdgeLogStore, batch: list[_Pending], now: int
    ) -> list[tuple[list[tuple[str, bool]], int, int]]:
        """(On the edge-log thread, or the loop when idle.) Append the batch in one
        transaction; per request its answers [(job_id, duplicate)], the jobs appended and
        the bytes they took."""
        out: list[tuple[list[tuple[str, bool]], int, int]] = []
        with store.transaction():
            for pending in batch:
                answers: list[tuple[str, bool]] = []
                kept = pb.EnqueueRequest()
                index: list[tuple[str, str, str]] = []
                seen: dict[tuple[str, str], str] = {}
                for spec in pending.request.jobs:
                    key = (spec.queue, spec.idempotency_key)
                    known = None
                    if spec.idempotency_key:
                        known = seen.get(key) or store.find_key(*key) or pending.stored.get(key)
                    if known is not None:
                        answers.append((known, True))
                        continue
                    answers.append((spec.job_id, False))
                    if spec.idempotency_key:
                        seen[key] = spec.job_id
                    kept.jobs.append(spec)
                    index.append((spec.job_id, spec.queue, spec.idempotency_key))
                size = 0
                if index:
                    blob = kept.SerializeToString()
                    store.append(blob, index, now)
                    size = len(blob)
                out.append((answers, len(index), size))
        return out

    def _stored(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """(On the keys thread.) The ids under which this node's database holds these keys."""
        try:
            if self._db is None:
                self._db = Store(apsw.Connection(self._db_path, flags=apsw.SQLITE_OPEN_READONLY))
                self._db.conn.set_busy_timeout(1000)
            db = self._db
            return {k: job_id for k in keys if (job_id := db.job_id_by_key(*k)) is not None}
        except apsw.Error as exc:  # LiteFS replacing the file: the primary's dedupe decides
            log.debug("edge log: key lookup in %s failed: %s", self._db_path, exc)
            if self._db is not None:
                self._db.conn.close()
                self._db = None
            return {}

    # ------------------------------------------------------------------ draining

    def _target(self) -> str | None:
        if self._node.is_primary():
            return self._cfg.address
        return self._node.primary_address()

    async def _send(self, target: str | None, request: pb.EnqueueRequest) -> pb.EnqueueResponse:
        if target is None:
            raise Unavailable("no primary")
        if target == self._cfg.address and self.store_here is not None:
            try:
                return await self.store_here(request)
            except (Unavailable, Forwarded):
                raise
            except Exception as exc:
                st = status.to_status(exc)
                raise Forwarded(st.code, st.message) from exc
        response: pb.EnqueueResponse = await self._forwarder.call(
            target, "Enqueue", request, seconds=DRAIN_TIMEOUT_SECONDS, metadata=self._metadata
        )
        return response

    def _next_batch(self, solo: bool) -> tuple[list[EdgeRow], pb.EnqueueRequest]:
        """(On the drain thread.) The oldest waiting requests that fit one Enqueue."""
        assert self._reader is not None
        return self._merge(self._reader.oldest(self._cfg.max_batch), solo)

    def _merge(self, rows: list[EdgeRow], solo: bool) -> tuple[list[EdgeRow], pb.EnqueueRequest]:
        """The oldest rows that fit one Enqueue (max_batch jobs, half the message cap)."""
        merged = pb.EnqueueRequest(durability=self._drain_durability)
        taken: list[EdgeRow] = []
        size = 0
        budget = self._cfg.max_message_bytes // 2
        for row in rows:
            full = len(merged.jobs) + row.jobs > self._cfg.max_batch or size + len(row.request) > budget
            if taken and (solo or full):
                break
            merged.jobs.extend(pb.EnqueueRequest.FromString(row.request).jobs)
            size += len(row.request)
            taken.append(row)
        return taken, merged

    async def _forget(self) -> None:
        """Forget drained jobs this node's database has applied (GetJob finds them there),
        and delete drained requests older than the keep window."""
        if self._unforgotten and time.monotonic() >= self._forget_at:
            self._forget_at = time.monotonic() + FORGET_SECONDS
            applied = self._node.latest()
            before = self._clock.now() - int(self.keep_seconds * MICROS)

            def forget(store: EdgeLogStore) -> int:
                store.forget_applied(applied)
                return store.prune_drained(before)

            self._kept = await self._write(forget)
            self._unforgotten = self.jobs > 0 or self._kept > 0

    async def _reoffer(self, target: str) -> None:
        """A primary this node has not offered its kept requests to (or this node just
        started): put the ones drained within the keep window back in line."""
        since = self._clock.now() - int(self.keep_seconds * MICROS)
        count = await self._write(lambda s: s.reoffer(since)) if self.keep_seconds > 0 else 0
        self._offered_to = target
        if count:
            self.pending, self.jobs, self.bytes, self.dead, self.oldest_at = await self._write(EdgeLogStore.totals)
            self._publish()
            metrics.EDGE_LOG_REOFFERED.inc(count)
            log.info("edge log: primary %s: offering it again %d request(s) drained in the last %.0fs",
                     target, count, self.keep_seconds)

    async def drain_loop(self) -> None:
        """Store waiting requests on the primary, oldest first (runs until cancelled)."""
        delay = RETRY_MIN_SECONDS
        doubtful = 0  # INTERNAL/UNKNOWN answers for the current head
        head = -1
        solo_until = -1  # after a refused merged batch: its rows one by one
        last_target: str | None = None
        last_sent = 0.0  # when the last drain call ended
        while True:
            primary = self._target()
            if primary is not None and primary != self._offered_to:
                await self._reoffer(primary)
            self._wake.clear()  # before reading: an append after the read sets it again
            solo = solo_until >= 0
            taken, merged = await self._in(self._drain_thread, functools.partial(self._next_batch, solo))
            busy = time.monotonic() - last_sent < LINGER_SECONDS
            if taken and busy and not solo and len(merged.jobs) < self._cfg.max_batch:
                # Under sustained traffic, linger a little for a fuller batch: fewer, larger
                # transactions on the primary (the oldest job waits at most LINGER_SECONDS).
                # A job after a quiet spell goes at once.
                wait = LINGER_SECONDS - (self._clock.now() - taken[0].created_at) / MICROS
                if wait > 0:
                    await asyncio.sleep(wait)
                    taken, merged = await self._in(self._drain_thread, functools.partial(self._next_batch, solo))
            if taken and taken[0].seq >= solo_until:
                solo_until = -1  # the last row of the refused batch: back to merging after it
            if not taken:
                await self._forget()
                self.oldest_at = None
                timeout = FORGET_SECONDS if self._unforgotten else None
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass
                continue
            self.oldest_at = taken[0].created_at
            if taken[0].seq != head:
                head, doubtful = taken[0].seq, 0
            target = self._target()
            if target != last_target:
                delay, last_target = RETRY_MIN_SECONDS, target
            try:
                response = await self._send(target, merged)
            except (Unavailable, Forwarded) as exc:
                last_sent = time.monotonic()
                code = exc.code if isinstance(exc, Forwarded) else grpc.StatusCode.UNAVAILABLE
                if code in DOUBTFUL:
                    doubtful += 1
                if code in TRANSIENT or (code in DOUBTFUL and doubtful < INTERNAL_ATTEMPTS):
                    log.debug("edge log: %d job(s) not stored yet (%s); retrying in <= %.2fs", len(merged.jobs),
                              code.name, delay)
                    await asyncio.sleep(random.uniform(delay / 2, delay))
                    delay = min(delay * 2, RETRY_MAX_SECONDS)
                    continue
                if len(taken) > 1:
                    solo_until = taken[-1].seq
                    log.warning("edge log: the primary refused a merged batch (%s); sending its requests one by one",
                                code.name)
                    continue
                reason = f"{code.name}: {exc.details}" if isinstance(exc, Forwarded) else str(exc)
                seq = taken[0].seq
                log.error("edge log: the primary refused request %d for good (%s); moved to the dead table in %s",
                          seq, reason, self.path)
                await self._write(functools.partial(EdgeLogStore.reject, seq=seq, reason=reason))
                self._moved(taken, dead=1)
                continue
            delay = RETRY_MIN_SECONDS
            last_sent = time.monotonic()
            stored = [
                (spec.job_id, result.job_id) for spec, result in zip(merged.jobs, response.results, strict=True)
            ]
            seqs = [row.seq for row in taken]
            await self._write(functools.partial(
                EdgeLogStore.drained, seqs=seqs, stored=stored, txid=response.txid, now=self._clock.now()
            ))
            self._unforgotten = True
            self._moved(taken)
            self._drained.append((time.monotonic(), len(merged.jobs)))
            metrics.EDGE_LOG_DRAINED.inc(len(merged.jobs))
            log.debug("edge log: %d job(s) stored on %s at txid %d", len(merged.jobs), target, response.txid)
            await self._forget()

    def _moved(self, rows: list[EdgeRow], dead: int = 0) -> None:
        self.pending -= len(rows)
        self.jobs -= sum(r.jobs for r in rows)
        self.bytes -= sum(len(r.request) for r in rows)
        self.dead += dead
        self._publish()


def _timestamp(micros: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(micros)
    return ts


def _full(why: str) -> ResourceExhausted:
    return ResourceExhausted(
        "", f"edge log full: {why}; retry later", reason="EDGE_LOG_FULL", retry_after=FULL_RETRY_SECONDS
    )


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)
