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
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from types import TracebackType
from typing import Self, TypeAlias, TypeVar

import grpc

from edgeq.v1 import queue_pb2 as pb

from . import _tracing
from . import _worker_core as core
from ._client import Client
from ._config import TLSOption
from ._errors import EdgeqError, error_from_rpc
from ._worker_core import LeasedJob, Outcome, WorkerStats

__all__ = ["Handler", "LeasedJob", "Worker", "WorkerStats"]

log = logging.getLogger("edgeq.worker")

_local = threading.local()
_R = TypeVar("_R")

#: A handler takes the delivery and returns an optional result (stored on the job by Ack).
Handler: TypeAlias = Callable[[LeasedJob], bytes | None]


class Worker(core.Counters):
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
        settings = core.Settings.parse(
            queues, concurrency=concurrency, max_in_flight=max_in_flight, lease_duration=lease_duration,
            handler_timeout=handler_timeout, worker_id=worker_id, heartbeat=heartbeat, ack_batch_max=ack_batch_max,
            ack_flush_interval=ack_flush_interval, reconnect_backoff=reconnect_backoff,
        )
        self.settings = settings
        if isinstance(target, Client):
            self.client, self._owns_client = target, False
        else:
            self.client, self._owns_client = Client(target, tls=tls, token=token), True
        self.handler = handler
        self.queues = settings.queues
        self.concurrency = settings.concurrency
        self.max_in_flight = settings.max_in_flight
        self.lease_duration = settings.lease_duration
        self.handler_timeout = settings.handler_timeout
        self.worker_id = settings.worker_id
        self.heartbeat = settings.heartbeat
        self.ack_batch_max = settings.ack_batch_max
        self.ack_flush_interval = settings.ack_flush_interval
        self.reconnect_backoff = settings.reconnect_backoff
        #: The fatal error that stopped the worker (also raised by ``run()``), if any.
        self.error: EdgeqError | None = None

        self._ledger = core.Ledger(settings, time.monotonic)
        self._stopping = threading.Event()
        self._deadline: float | None = None
        self._call: grpc.CallIterator[pb.LeaseResponse] | None = None
        self._call_lock = threading.RLock()  # reentrant: stop() may run in a signal handler
        self._running: dict[str, LeasedJob] = {}  # handler not finished; pop() claims the outcome
        self._idle = threading.Condition()
        self._draining = False
        self._settle_q: queue.SimpleQueue[Outcome | None] = queue.SimpleQueue()
        self._hb_stop = threading.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self._started = False
        self._run_thread: threading.Thread | None = None
        self._done = threading.Event()

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
        req = self.settings.lease_request()
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
                if err.code in core.FATAL:
                    log.error("lease stream refused, stopping the worker: %s", err)
                    self.error = err
                    break
                log.warning("lease stream failed (%s); reconnecting", err)
            finally:
                with self._call_lock:
                    self._call = None
            delay = self.settings.reconnect_delay(failures)
            failures += 1
            if self._stopping.wait(delay):
                break
            self._ledger.reconnects += 1

    def _dispatch(self, jobs: Sequence[pb.LeasedJob]) -> None:
        leased = self._ledger.receive(jobs)
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
            self._settle_q.put((lj, core.handback(lj, "worker stopping"), False))
            if self._draining and not self._running:
                with self._idle:
                    self._idle.notify_all()
            return
        item: pb.AckItem | pb.NackItem
        lj._started = time.monotonic()
        try:
            with _tracing.handler_span(lj.queue, lj.id, lj.attempts, lj.headers):
                item = core.done(lj, self.handler(lj))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - an Exception, or a "panic": reported on the job, the worker runs on
            item = core.failed(lj, exc)
        if self._running.pop(token, None) is None:
            log.warning("job %s finished after it was given up (timeout or drain); its outcome is dropped", lj.id)
            return
        if lj.lease_lost.is_set():  # logged when it was lost; nothing to send
            self._ledger.processed += 1
            self._ledger.release([lj])
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
                self._ledger.release([lj for lj, _, _ in batch])

    def _flush(self, batch: list[Outcome]) -> None:
        acks, nacks, runs = core.split(batch)
        self._ledger.processed += runs
        if acks:
            self._settle_acks(acks)
        if nacks:
            self._settle_nacks(nacks)

    def _settle_acks(self, acks: list[tuple[LeasedJob, pb.AckItem]]) -> None:
        try:
            resp = self._send("Ack", lambda: self.client.ack_raw([m for _, m in acks]))
        except EdgeqError as err:
            if core.isolate(err):
                if len(acks) > 1:  # one bad item refuses the whole call: isolate it
                    for a in acks:
                        self._settle_acks([a])
                    return
                lj, _ = acks[0]  # e.g. a result over the size limit: fail the attempt instead
                self._settle_nacks([(lj, core.refused_ack(lj, err))])
                return
            self._ledger.gave_up("Ack", [lj for lj, _ in acks], err)
            return
        self._ledger.settled("ack", [lj for lj, _ in acks], resp.outcomes)

    def _settle_nacks(self, nacks: list[tuple[LeasedJob, pb.NackItem]]) -> None:
        try:
            resp = self._send("Nack", lambda: self.client.nack_raw([m for _, m in nacks]))
        except EdgeqError as err:
            if len(nacks) > 1 and core.isolate(err):
                for n in nacks:
                    self._settle_nacks([n])
                return
            self._ledger.gave_up("Nack", [lj for lj, _ in nacks], err)
            return
        self._ledger.settled("nack", [lj for lj, _ in nacks], resp.outcomes)

    def _send(self, what: str, call: Callable[[], _R]) -> _R:
        """``call()``, retried on transient errors while the leases may still be live."""
        give_up_at = time.monotonic() + self.lease_duration
        delay = self.reconnect_backoff[0]
        while True:
            try:
                return call()
            except EdgeqError as err:
                limit = give_up_at
                if self._draining and self._deadline is not None:
                    limit = min(limit, self._deadline + self.client.timeout)
                if not core.resend_after(what, err, time.monotonic(), delay, limit):
                    raise
                time.sleep(delay)
                delay = min(delay * 2, self.reconnect_backoff[1])

    # ------------------------------------------------------------------ heartbeats (heartbeat thread)

    def _heartbeat_loop(self) -> None:
        """Extends due leases in one call per tick, and abandons handlers past their timeout."""
        tick = self.settings.tick
        while not self._hb_stop.wait(tick):
            if self.handler_timeout is not None:
                self._time_out(time.monotonic() - self.handler_timeout)
            if not self.heartbeat:
                continue
            due = self._ledger.due(time.monotonic() + tick)
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
            self._settle_q.put((lj, core.timed_out(lj, self.handler_timeout), True))
            if self._draining and not self._running:
                with self._idle:
                    self._idle.notify_all()

    def _extend(self, due: list[LeasedJob]) -> None:
        sent = time.monotonic()
        try:
            resp = self.client.heartbeat_raw([lj.lease_token for lj in due], progress=self._ledger.progress(due))
        except EdgeqError as err:
            log.warning("heartbeat of %d leases failed (%s); retrying on the next tick", len(due), err)
            return
        self._ledger.extended(due, resp, sent)

    # ------------------------------------------------------------------ drain (run thread)

    def _drain(self) -> None:
        self._stopping.set()
        self._draining = True
        if self._deadline is None:  # stopped by a fatal stream error, not by stop()
            self._deadline = time.monotonic() + core.DEFAULT_DRAIN_SECONDS
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
                self._settle_q.put((lj, core.handback(lj, "worker stopped before the job finished"), False))
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

