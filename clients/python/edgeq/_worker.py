"""``Worker``: takes jobs from a Lease stream and runs a handler on a thread pool.

Owns the consumer side of the protocol with a fixed set of threads and no per-job RPCs:

- the *run* thread (the caller of ``run()``, or the one ``start()`` spawns) reads the Lease
  stream, hands each job to the pool, and reconnects with exponential backoff and full
  jitter when the stream fails (server restart, drain, network loss);
- ``concurrency`` *pool* threads run the handler and queue its outcome (return -> Ack,
  ``Retry`` / ``Fail`` / any other exception -> Nack);
- the *settler* thread sends queued outcomes in batches: one Ack call and one Nack call per
  flush (up to ``ack_batch_max`` items, gathered for at most ``ack_flush_interval``);
- the *heartbeat* thread extends, in one batched call, every lease that has used about
  half of its duration, so long handlers keep their jobs.

Settles and heartbeats are resent with the same lease tokens when they fail transiently
(the Client itself resends a write answered CommittedNotReplicated; the server answers a
repeated Ack / Nack with the first outcome). A heartbeat that finds a lease STALE after
this worker queued the job's outcome is not a lost lease: the Ack or Nack in flight settled
it (the race of a heartbeat with this worker's own settle); the settle's outcome decides.

``stop()`` drains: the Lease stream is cancelled first (no new jobs), jobs already received
run to completion (up to the timeout), their outcomes are flushed, and whatever is still
unfinished at the timeout is handed back with an immediate-retry Nack.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self, TypeAlias, TypeVar

import grpc
from google.protobuf import duration_pb2

from edgeq.v1 import queue_pb2 as pb

from . import _tracing
from ._client import BATCH_MAX, Client
from ._config import TLSOption
from ._errors import EdgeqError, Fail, Retry, error_from_rpc
from ._models import Job, to_datetime, to_duration

__all__ = ["Handler", "LeasedJob", "Worker", "WorkerStats"]

log = logging.getLogger("edgeq.worker")

#: Stream errors that retrying cannot fix: the worker stops and ``run()`` raises.
_FATAL = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
#: Settle errors worth retrying (the server may have been restarting or draining).
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
    }
)
#: A Nack's retry_delay of 0 means "the server's backoff"; this is the smallest non-zero one.
_IMMEDIATE = duration_pb2.Duration(nanos=1000)
_MAX_ERROR_MESSAGE = 8192
_OK = pb.LEASE_OUTCOME_OK

_local = threading.local()
_R = TypeVar("_R")


class LeasedJob:
    """One delivery, as a handler sees it.

    ``payload``, ``id``, ``queue``, ``headers``, ``attempts`` (this delivery included) come
    from the job; ``job`` converts the whole of it. ``lease_lost`` is set when a heartbeat
    or the settle call finds the lease stale (expired, re-leased or the job cancelled): the
    handler may stop early, since its outcome will be ignored. ``cancelled`` is set then too,
    and also when the handler times out or a stop's drain timeout passes: whenever the
    worker no longer waits for this handler (docs/worker-contract.md, §5).
    """

    __slots__ = (
        "_due", "_job", "_settling", "_started", "cancelled", "lease_expires_at", "lease_lost", "lease_token", "raw"
    )

    def __init__(self, raw: pb.LeasedJob, due: float) -> None:
        self.raw = raw
        self.lease_token: str = raw.lease_token
        #: When the lease lapses unless extended (updated by heartbeats).
        self.lease_expires_at: datetime | None = to_datetime(raw.lease_expires_at)
        self.lease_lost = threading.Event()
        self.cancelled = threading.Event()
        self._due = due  # monotonic time of the next heartbeat
        self._started: float | None = None  # monotonic time the handler began
        self._settling = False  # its Ack / Nack is queued or sent: heartbeats no longer judge the lease
        self._job: Job | None = None

    @property
    def id(self) -> str:
        return self.raw.job.id

    @property
    def queue(self) -> str:
        return self.raw.job.queue

    @property
    def payload(self) -> bytes:
        return self.raw.job.payload

    @property
    def headers(self) -> Mapping[str, str]:
        return self.raw.job.headers

    @property
    def attempts(self) -> int:
        return self.raw.job.attempts

    @property
    def max_attempts(self) -> int:
        return self.raw.job.max_attempts

    @property
    def priority(self) -> int:
        return self.raw.job.priority

    @property
    def job(self) -> Job:
        if self._job is None:
            self._job = Job.from_proto(self.raw.job)
        return self._job

    def __repr__(self) -> str:
        return f"LeasedJob(id={self.id!r}, queue={self.queue!r}, attempts={self.attempts})"


#: A handler takes the delivery and returns an optional result (stored on the job by Ack).
Handler: TypeAlias = Callable[[LeasedJob], bytes | None]

# (job, item to send, True when it is a handler's outcome rather than a drain give-back)
_Outcome: TypeAlias = tuple[LeasedJob, pb.AckItem | pb.NackItem, bool]


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """Counters since the worker started."""

    #: Handler runs finished (outcome queued).
    processed: int
    #: Acks and Nacks the server applied (outcome OK).
    acked: int
    nacked: int
    #: Acks / Nacks refused as STALE or INVALID (lease lost before settling).
    stale: int
    #: Leases a heartbeat found lost.
    lease_lost: int
    #: Lease streams reopened after a failure.
    reconnects: int
    #: Leases held right now (received, not yet settled).
    in_flight: int


class Worker:
    """Runs ``handler`` for every job leased from ``queues``.

    ``target`` is a ``host:port`` (the worker opens and closes its own Client) or a Client
    to share. ``max_in_flight`` (default ``4 * concurrency``) is how many unsettled jobs the
    server may push ahead; ``lease_duration`` is in seconds (at least 1). ``handler_timeout``
    (seconds, default none): a handler running longer is abandoned — its ``cancelled`` event
    fires and the job is Nacked at once with the server's backoff. ``reconnect_backoff`` is
    (initial, max) seconds for reopening the stream, with full jitter. ``tls`` and ``token``
    are the Client's (used when ``target`` is an address). The rules are
    docs/worker-contract.md's, shared with the Go and TypeScript Workers.

    The handler returns ``None`` or bytes (Ack, with the bytes as the job's result); raising
    ``Retry(delay=...)`` retries after that delay, ``Fail(message)`` fails the job for good,
    any other exception retries with the server's backoff, ``repr(exc)`` as the error, and a
    ``BaseException`` that is not an ``Exception`` (the nearest thing to a panic) does the
    same with ``panic: ...`` as the error, the worker running on.
    """

    def __init__(
        self,
        target: str | Client,
        queues: str | Sequence[str],
        handler: Handler,
        *,
        concurrency: int = 8,
        max_in_flight: int | None = None,
        lease_duration: float | timedelta = 30.0,
        handler_timeout: float | timedelta | None = None,
        worker_id: str | None = None,
        heartbeat: bool = True,
        ack_batch_max: int = 256,
        ack_flush_interval: float = 0.005,
        reconnect_backoff: tuple[float, float] = (0.1, 5.0),
        tls: TLSOption = None,
        token: str | None = None,
    ) -> None:
        self.queues: tuple[str, ...] = (queues,) if isinstance(queues, str) else tuple(queues)
        if not self.queues:
            raise ValueError("queues must name at least one queue")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        lease = lease_duration.total_seconds() if isinstance(lease_duration, timedelta) else float(lease_duration)
        if lease < 1:
            raise ValueError("lease_duration must be at least 1 second")
        timeout = handler_timeout.total_seconds() if isinstance(handler_timeout, timedelta) else handler_timeout
        if timeout is not None and timeout <= 0:
            raise ValueError("handler_timeout must be positive")
        if not 1 <= ack_batch_max <= BATCH_MAX:
            raise ValueError(f"ack_batch_max must be 1..{BATCH_MAX}")
        if ack_flush_interval < 0:
            raise ValueError("ack_flush_interval must not be negative")
        initial, maximum = reconnect_backoff
        if not 0 < initial <= maximum:
            raise ValueError("reconnect_backoff must be (initial, max) with 0 < initial <= max")

        if isinstance(target, Client):
            self.client, self._owns_client = target, False
        else:
            self.client, self._owns_client = Client(target, tls=tls, token=token), True
        self.handler = handler
        self.concurrency = concurrency
        self.max_in_flight = max_in_flight if max_in_flight is not None else 4 * concurrency
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.lease_duration = lease
        self.handler_timeout = timeout
        self.worker_id = worker_id if worker_id is not None else f"{socket.gethostname()}-{os.getpid()}"
        self.heartbeat = heartbeat
        self.ack_batch_max = ack_batch_max
        self.ack_flush_interval = ack_flush_interval
        self.reconnect_backoff = (initial, maximum)
        #: The fatal error that stopped the worker (also raised by ``run()``), if any.
        self.error: EdgeqError | None = None

        self._half = lease / 2
        self._stopping = threading.Event()
        self._deadline: float | None = None
        self._call: grpc.CallIterator[pb.LeaseResponse] | None = None
        self._call_lock = threading.RLock()  # reentrant: stop() may run in a signal handler
        self._running: dict[str, LeasedJob] = {}  # handler not finished; pop() claims the outcome
        self._held: dict[str, LeasedJob] = {}  # lease not settled yet; heartbeated
        self._held_lock = threading.Lock()
        self._idle = threading.Condition()
        self._draining = False
        self._settle_q: queue.SimpleQueue[_Outcome | None] = queue.SimpleQueue()
        self._hb_stop = threading.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self._started = False
        self._run_thread: threading.Thread | None = None
        self._done = threading.Event()

        self._processed = self._acked = self._nacked = self._stale = self._lost = self._reconnects = 0

    # ------------------------------------------------------------------ counters

    @property
    def processed(self) -> int:
        return self._processed

    @property
    def acked(self) -> int:
        return self._acked

    @property
    def nacked(self) -> int:
        return self._nacked

    @property
    def reconnects(self) -> int:
        return self._reconnects

    @property
    def stats(self) -> WorkerStats:
        return WorkerStats(
            self._processed, self._acked, self._nacked, self._stale, self._lost, self._reconnects, len(self._held)
        )

    # ------------------------------------------------------------------ lifecycle

    def _claim_start(self, thread: threading.Thread) -> None:
        with self._start_lock:
            if self._started:
                raise RuntimeError("a Worker runs once; create a new one")
            self._started = True
            self._run_thread = thread

    def run(self) -> None:
        """Process jobs until ``stop()`` (or Ctrl-C, which drains with a 30 s timeout).
        Raises the ``EdgeqError`` that stopped it when the stream fails for good (e.g. an
        invalid queue name or a refused token)."""
        self._claim_start(threading.current_thread())
        self._run()
        if self.error is not None:
            raise self.error

    def start(self) -> Self:
        """Run in a background thread; returns at once. Stop with ``stop()``."""
        thread = threading.Thread(target=self._run, name="edgeq-worker", daemon=True)
        self._claim_start(thread)
        thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Drain and stop: no new jobs; jobs already received get up to ``timeout`` seconds
        to finish, then are handed back (Nack, immediate retry); outcomes are flushed.

        Thread-safe and callable from a signal handler or a handler: called from the thread
        that runs ``run()`` (or from a handler) it only requests the stop and returns;
        otherwise it waits until the worker has stopped."""
        if threading.current_thread() is self._run_thread:
            # Possibly a signal handler interrupting run(): take no locks on this thread.
            threading.Thread(target=self._request_stop, args=(timeout,), daemon=True).start()
            return
        self._request_stop(timeout)
        if self._started and not getattr(_local, "in_handler", False):
            self._done.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _request_stop(self, timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._call_lock:
            if self._deadline is None or deadline < self._deadline:
                self._deadline = deadline
            self._stopping.set()
            call = self._call
        if call is not None:
            call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves cancel() untyped

    def _run(self) -> None:
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="edgeq-handler")
        self._threads = [threading.Thread(target=self._settle_loop, name="edgeq-settler", daemon=True)]
        if self.heartbeat or self.handler_timeout is not None:
            self._threads.append(threading.Thread(target=self._heartbeat_loop, name="edgeq-heartbeat", daemon=True))
        for t in self._threads:
            t.start()
        try:
            try:
                self._lease_loop()
            except KeyboardInterrupt:
                log.info("interrupted: draining (up to 30s)")
                self._request_stop(30.0)
        finally:
            self._drain()

    # ------------------------------------------------------------------ the Lease stream

    def _lease_loop(self) -> None:
        req = pb.LeaseRequest(queues=self.queues, worker_id=self.worker_id, max_in_flight=self.max_in_flight)
        req.lease_duration.CopyFrom(to_duration(self.lease_duration))
        initial, maximum = self.reconnect_backoff
        failures = 0
        while not self._stopping.is_set():
            call = self.client.stub.Lease(req, metadata=self.client.metadata)
            with self._call_lock:
                self._call = call
                stopping = self._stopping.is_set()
            if stopping:  # stop() came before the call existed
                call.cancel()  # type: ignore[no-untyped-call]
            try:
                for msg in call:
                    failures = 0
                    if msg.jobs:  # an empty message is a keepalive
                        self._dispatch(msg.jobs)
                if not self._stopping.is_set():
                    log.warning("lease stream ended by the server; reconnecting")
            except grpc.RpcError as rpc_err:
                if self._stopping.is_set():
                    break
                err = error_from_rpc(rpc_err)
                if err.code in _FATAL:
                    log.error("lease stream refused, stopping the worker: %s", err)
                    self.error = err
                    break
                log.warning("lease stream failed (%s); reconnecting", err)
            finally:
                with self._call_lock:
                    self._call = None
            delay = random.uniform(0, min(maximum, initial * 2 ** min(failures, 32)))
            failures += 1
            if self._stopping.wait(delay):
                break
            self._reconnects += 1

    def _dispatch(self, jobs: Sequence[pb.LeasedJob]) -> None:
        due = time.monotonic() + self._half
        leased = [LeasedJob(j, due) for j in jobs]
        with self._held_lock:
            for lj in leased:
                self._held[lj.lease_token] = lj
        running = self._running
        submit = self._executor.submit  # type: ignore[union-attr]  # set before the loop runs
        for lj in leased:
            running[lj.lease_token] = lj
            submit(self._execute, lj)

    # ------------------------------------------------------------------ handlers (pool threads)

    def _execute(self, lj: LeasedJob) -> None:
        _local.in_handler = True
        token = lj.lease_token
        if token not in self._running:  # handed back by a drain that timed out
            return
        if self._stopping.is_set() and self._running.pop(token, None) is not None:
            # Received but not started when stop() came: handed back at once, for another worker.
            lj._settling = True
            back = pb.NackItem(lease_token=token, error_message="worker stopping", retry_delay=_IMMEDIATE)
            self._settle_q.put((lj, back, False))
            if self._draining and not self._running:
                with self._idle:
                    self._idle.notify_all()
            return
        item: pb.AckItem | pb.NackItem
        lj._started = time.monotonic()
        try:
            with _tracing.handler_span(lj.queue, lj.id, lj.attempts, lj.headers):
                result = self.handler(lj)
            if result is None:
                item = pb.AckItem(lease_token=token)
            elif isinstance(result, bytes | bytearray | memoryview):
                item = pb.AckItem(lease_token=token, result=bytes(result))
            else:
                raise TypeError(f"handler returned {type(result).__name__}; expected bytes or None")
        except Retry as r:
            item = pb.NackItem(lease_token=token, error_message=_clip(str(r)))
            if r.delay is not None:
                item.retry_delay.CopyFrom(to_duration(r.delay) if r.delay > 0 else _IMMEDIATE)
        except Fail as f:
            item = pb.NackItem(lease_token=token, error_message=_clip(str(f)), terminal=True)
        except Exception as exc:
            log.warning("job %s failed (attempt %d of %d)", lj.id, lj.attempts, lj.max_attempts, exc_info=True)
            item = pb.NackItem(lease_token=token, error_message=_clip(repr(exc)))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a "panic": reported on the job, the worker runs on
            log.error("job %s panicked (attempt %d of %d)", lj.id, lj.attempts, lj.max_attempts, exc_info=True)
            item = pb.NackItem(lease_token=token, error_message=_clip(f"panic: {type(exc).__name__}: {exc}"))
        if self._running.pop(token, None) is None:
            log.warning("job %s finished after it was given up (timeout or drain); its outcome is dropped", lj.id)
            return
        if lj.lease_lost.is_set():  # logged when it was lost; nothing to send
            self._processed += 1
            self._release([lj])
            if self._draining and not self._running:
                with self._idle:
                    self._idle.notify_all()
            return
        lj._settling = True
        self._settle_q.put((lj, item, True))
        if self._draining and not self._running:
            with self._idle:
                self._idle.notify_all()

    # ------------------------------------------------------------------ settling (settler thread)

    def _settle_loop(self) -> None:
        q = self._settle_q
        size, interval = self.ack_batch_max, self.ack_flush_interval
        done = False
        while not done:
            first = q.get()
            if first is None:
                break
            batch = [first]
            if interval > 0:
                flush_at = time.monotonic() + interval
                while len(batch) < size:
                    remaining = flush_at - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        item = q.get(timeout=remaining)
                    except queue.Empty:
                        break
                    if item is None:
                        done = True
                        break
                    batch.append(item)
            while len(batch) < size and not done:  # whatever else is already queued
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    done = True
                else:
                    batch.append(item)
            try:
                self._flush(batch)
            except Exception:
                log.exception("settling %d outcomes failed", len(batch))
                self._release([lj for lj, _, _ in batch])

    def _flush(self, batch: list[_Outcome]) -> None:
        acks: list[tuple[LeasedJob, pb.AckItem]] = []
        nacks: list[tuple[LeasedJob, pb.NackItem]] = []
        for lj, item, from_handler in batch:
            if from_handler:
                self._processed += 1
            if isinstance(item, pb.AckItem):
                acks.append((lj, item))
            else:
                nacks.append((lj, item))
        if acks:
            self._settle_acks(acks)
        if nacks:
            self._settle_nacks(nacks)

    def _settle_acks(self, acks: list[tuple[LeasedJob, pb.AckItem]]) -> None:
        try:
            resp = self._send("Ack", lambda: self.client.ack_raw([m for _, m in acks]))
        except EdgeqError as err:
            if err.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
                if len(acks) > 1:  # one bad item refuses the whole call: isolate it
                    for a in acks:
                        self._settle_acks([a])
                    return
                lj, _ = acks[0]  # e.g. a result over the size limit: fail the attempt instead
                log.error("ack of job %s refused (%s); nacking it", lj.id, err)
                msg = _clip(f"ack refused: {err}")
                self._settle_nacks([(lj, pb.NackItem(lease_token=lj.lease_token, error_message=msg))])
                return
            self._give_up("Ack", [lj for lj, _ in acks], err)
            return
        self._acked += self._outcomes("ack", [lj for lj, _ in acks], resp.outcomes)

    def _settle_nacks(self, nacks: list[tuple[LeasedJob, pb.NackItem]]) -> None:
        try:
            resp = self._send("Nack", lambda: self.client.nack_raw([m for _, m in nacks]))
        except EdgeqError as err:
            if len(nacks) > 1 and err.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
                for n in nacks:
                    self._settle_nacks([n])
                return
            self._give_up("Nack", [lj for lj, _ in nacks], err)
            return
        self._nacked += self._outcomes("nack", [lj for lj, _ in nacks], resp.outcomes)

    def _send(self, what: str, call: Callable[[], _R]) -> _R:
        """``call()``, retried on transient errors while the leases may still be live."""
        give_up_at = time.monotonic() + self.lease_duration
        delay = self.reconnect_backoff[0]
        while True:
            try:
                return call()
            except EdgeqError as err:
                now = time.monotonic()
                limit = give_up_at
                if self._draining and self._deadline is not None:
                    limit = min(limit, self._deadline + self.client.timeout)
                if err.code not in _TRANSIENT or now + delay >= limit:
                    raise
                log.warning("%s failed (%s); retrying in %.2fs", what, err, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.reconnect_backoff[1])

    def _give_up(self, what: str, jobs: list[LeasedJob], err: EdgeqError) -> None:
        log.error("%s of %d jobs failed (%s); their leases will expire and they will be redelivered",
                  what, len(jobs), err)
        self._release(jobs)

    def _outcomes(self, what: str, jobs: list[LeasedJob], outcomes: Sequence[int]) -> int:
        ok = 0
        for lj, outcome in zip(jobs, outcomes, strict=False):
            if outcome == _OK:
                ok += 1
            else:
                self._stale += 1
                lj.lease_lost.set()
                name = pb.LeaseOutcome.Name(outcome) if outcome in pb.LeaseOutcome.values() else str(outcome)
                log.warning("%s of job %s: %s (lease expired, re-leased or cancelled; nothing changed)",
                            what, lj.id, name)
        self._release(jobs)
        return ok

    def _release(self, jobs: list[LeasedJob]) -> None:
        with self._held_lock:
            for lj in jobs:
                self._held.pop(lj.lease_token, None)

    # ------------------------------------------------------------------ heartbeats (heartbeat thread)

    def _heartbeat_loop(self) -> None:
        """Extends due leases in one call per tick, and abandons handlers past their timeout."""
        tick = min(max(self.lease_duration / 8, 0.05), 5.0)
        if self.handler_timeout is not None:
            tick = min(tick, max(self.handler_timeout / 10, 0.01))
        while not self._hb_stop.wait(tick):
            if self.handler_timeout is not None:
                self._time_out(time.monotonic() - self.handler_timeout)
            if not self.heartbeat:
                continue
            horizon = time.monotonic() + tick
            with self._held_lock:
                due = [lj for lj in self._held.values() if lj._due <= horizon and not lj.lease_lost.is_set()]
            if due:
                try:
                    self._extend(due)
                except Exception:
                    log.exception("heartbeat failed")

    def _time_out(self, started_before: float) -> None:
        """Nack (server backoff) every handler that began before ``started_before``."""
        assert self.handler_timeout is not None
        for lj in list(self._running.values()):
            if lj._started is None or lj._started > started_before or self._running.pop(lj.lease_token, None) is None:
                continue
            lj.cancelled.set()
            lj._settling = True
            log.warning("job %s: handler timed out after %.3gs; nacking it", lj.id, self.handler_timeout)
            message = f"handler timed out after {self.handler_timeout:g}s"
            self._settle_q.put((lj, pb.NackItem(lease_token=lj.lease_token, error_message=message), True))
            if self._draining and not self._running:
                with self._idle:
                    self._idle.notify_all()

    def _extend(self, due: list[LeasedJob]) -> None:
        sent = time.monotonic()
        try:
            resp = self.client.heartbeat_raw([lj.lease_token for lj in due])
        except EdgeqError as err:
            log.warning("heartbeat of %d leases failed (%s); retrying on the next tick", len(due), err)
            return
        for i, (lj, outcome) in enumerate(zip(due, resp.outcomes, strict=False)):
            if outcome == _OK:
                lj._due = sent + self._half
                if i < len(resp.lease_expires_at):
                    lj.lease_expires_at = to_datetime(resp.lease_expires_at[i]) or lj.lease_expires_at
            elif lj._settling:
                # This worker's own Ack / Nack got there first (or is on its way and will
                # report STALE itself if the lease really was lost): not a lost lease.
                log.debug("heartbeat of job %s: %s while its outcome is being settled",
                          lj.id, pb.LeaseOutcome.Name(outcome))
            else:
                self._lost += 1
                lj.lease_lost.set()
                lj.cancelled.set()
                log.warning("lease of job %s lost (%s): the handler's outcome will be ignored",
                            lj.id, pb.LeaseOutcome.Name(outcome))

    # ------------------------------------------------------------------ drain (run thread)

    def _drain(self) -> None:
        self._stopping.set()
        self._draining = True
        if self._deadline is None:  # stopped by a fatal stream error, not by stop()
            self._deadline = time.monotonic() + 30.0
        deadline = self._deadline
        try:
            with self._idle:
                self._idle.wait_for(lambda: not self._running, timeout=max(0.0, deadline - time.monotonic()))
            leftover = [lj for lj in self._running.copy().values() if self._running.pop(lj.lease_token, None)]
            if leftover:
                log.warning("stop timeout: handing back %d unfinished jobs", len(leftover))
            for lj in leftover:
                lj.cancelled.set()
                lj._settling = True
                item = pb.NackItem(lease_token=lj.lease_token, error_message="worker stopped before the job finished",
                                   retry_delay=_IMMEDIATE)
                self._settle_q.put((lj, item, False))
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
            self._settle_q.put(None)
            for t in self._threads:
                if t.name == "edgeq-settler":
                    t.join()
            self._hb_stop.set()
            for t in self._threads:
                t.join()
        finally:
            if self._owns_client:
                self.client.close()
            self._done.set()

    def __repr__(self) -> str:
        return f"Worker({self.client.target!r}, {list(self.queues)!r}, concurrency={self.concurrency})"


def _clip(message: str) -> str:
    return message if len(message) <= _MAX_ERROR_MESSAGE else message[: _MAX_ERROR_MESSAGE - 3] + "..."
