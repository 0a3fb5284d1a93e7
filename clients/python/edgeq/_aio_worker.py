"""``edgeq.aio.Worker``: the Worker for asyncio programs, on grpc.aio.

The same options, rules and defaults as ``edgeq.Worker`` (docs/worker-contract.md), from
the same code: every decision — options, what a handler's end becomes, hand-backs,
timeouts, the leases held and what heartbeat and settle outcomes mean, settle isolation
and resends, reconnect jitter — is ``_worker_core``'s. This module only waits, with tasks
on one event loop instead of threads:

- the *stream* task reads the Lease stream and starts a task per job; at most
  ``concurrency`` handlers run at once (the others wait for a slot, held and heartbeated);
- each handler is awaited (an ``async def``; a plain function runs in a thread with
  ``asyncio.to_thread``); when the worker gives it up — its lease lost, its timeout, a
  stop's drain timeout — its task is cancelled (``asyncio.CancelledError`` in the handler)
  and ``job.cancelled`` is set, its outcome not sent;
- the *settler* task sends outcomes in batches (``ack_batch_max``, gathered for at most
  ``ack_flush_interval``); the *heartbeat* task extends due leases in one call per tick.

    async def send_email(job):
        await smtp.send(json.loads(job.payload))

    async with edgeq.aio.Worker("127.0.0.1:50051", ["emails"], send_email, concurrency=32):
        await shutdown.wait()
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, TypeAlias, TypeVar

import grpc

from edgeq.v1 import queue_pb2 as pb

from . import _tracing
from . import _worker_core as core
from ._config import TLSOption
from ._errors import EdgeqError, error_from_rpc
from ._worker_core import LeasedJob, Outcome

__all__ = ["AsyncHandler", "Worker"]

log = logging.getLogger("edgeq.worker")

#: An async handler (or a plain function, run in a thread): the delivery in, an optional result out.
AsyncHandler: TypeAlias = Callable[[LeasedJob], Awaitable[bytes | None]] | Callable[[LeasedJob], bytes | None]
_R = TypeVar("_R")
_in_handler: contextvars.ContextVar[bool] = contextvars.ContextVar("edgeq_in_handler", default=False)


class Worker(core.Counters):
    """Runs ``handler`` for every job leased from ``queues``: ``edgeq.Worker``'s arguments,
    on asyncio. ``target`` is a ``host:port`` or an ``edgeq.aio.Client`` to share.

    ``async with Worker(...)`` (or ``start()``) runs it in a task; ``await stop(timeout)``
    drains: no new jobs, running handlers get ``timeout`` seconds, then are cancelled and
    their jobs handed back. ``await run()`` runs until ``stop()`` (cancelling it drains
    too) and raises the ``EdgeqError`` that stopped it when the stream fails for good."""

    def __init__(
        self,
        target: Any,
        queues: str | Sequence[str],
        handler: AsyncHandler,
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
        from .aio import Client  # the aio module imports this one

        self.settings = core.Settings.parse(
            queues, concurrency=concurrency, max_in_flight=max_in_flight, lease_duration=lease_duration,
            handler_timeout=handler_timeout, worker_id=worker_id, heartbeat=heartbeat, ack_batch_max=ack_batch_max,
            ack_flush_interval=ack_flush_interval, reconnect_backoff=reconnect_backoff,
        )
        if isinstance(target, Client):
            self.client, self._owns_client = target, False
        else:
            self.client, self._owns_client = Client(str(target), tls=tls, token=token), True
        self.handler = handler
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - an object whose __call__ is async
        )
        self.queues = self.settings.queues
        #: The fatal error that stopped the worker (also raised by ``run()``), if any.
        self.error: EdgeqError | None = None
        self._ledger = core.Ledger(self.settings, self._now)
        self._running: dict[str, LeasedJob] = {}  # handler not finished; pop() claims the outcome
        self._tasks: dict[str, asyncio.Task[None]] = {}  # each job's task, until it ends
        self._slots: asyncio.Semaphore | None = None
        self._settle_q: asyncio.Queue[Outcome | None] | None = None
        self._stopping: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._done: asyncio.Event | None = None
        self._call: Any = None
        self._deadline: float | None = None
        self._draining = False
        self._task: asyncio.Task[None] | None = None
        self._started = False

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    # ------------------------------------------------------------------ lifecycle

    def _claim_start(self) -> None:
        if self._started:
            raise RuntimeError("a Worker runs once; create a new one")
        self._started = True
        self._slots = asyncio.Semaphore(self.settings.concurrency)
        self._settle_q = asyncio.Queue()
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._done = asyncio.Event()

    async def run(self) -> None:
        """Process jobs until ``stop()``; cancelling the task that awaits this drains
        (up to 30 s) before the cancellation goes on."""
        self._claim_start()
        try:
            await self._run()
        except asyncio.CancelledError:
            log.info("cancelled: draining (up to %gs)", core.DEFAULT_DRAIN_SECONDS)
            raise
        if self.error is not None:
            raise self.error

    def start(self) -> Self:
        """Run in a task of the running loop; returns at once. Stop with ``await stop()``."""
        self._claim_start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="edgeq-worker")
        return self

    async def stop(self, timeout: float = core.DEFAULT_DRAIN_SECONDS) -> None:  # noqa: ASYNC109 - the sync stop()'s
        """Drain and stop: no new jobs; jobs already received get up to ``timeout`` seconds
        to finish, then are cancelled and handed back (Nack, immediate retry); outcomes are
        flushed. From inside a handler it only requests the stop."""
        self._request_stop(timeout)
        if self._done is not None and not _in_handler.get():
            await self._done.wait()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _request_stop(self, timeout: float) -> None:
        if self._stopping is None:
            return
        deadline = self._now() + max(0.0, timeout)
        if self._deadline is None or deadline < self._deadline:
            self._deadline = deadline
        self._stopping.set()
        if self._call is not None:
            self._call.cancel()

    async def _run(self) -> None:
        assert self._settle_q is not None
        loops = [asyncio.create_task(self._settle_loop(), name="edgeq-settler")]
        if self.settings.heartbeat or self.settings.handler_timeout is not None:
            loops.append(asyncio.create_task(self._heartbeat_loop(), name="edgeq-heartbeat"))
        try:
            await self._lease_loop()
        finally:
            await asyncio.shield(self._drain(loops))

    # ------------------------------------------------------------------ the Lease stream

    async def _lease_loop(self) -> None:
        assert self._stopping is not None
        req = self.settings.lease_request()
        failures = 0
        while not self._stopping.is_set():
            call = self.client.stub.Lease(req, metadata=self.client.metadata)
            self._call = call
            try:
                async for msg in call:
                    failures = 0
                    if msg.jobs:  # an empty message is a keepalive
                        self._dispatch(msg.jobs)
                if not self._stopping.is_set():
                    log.warning("lease stream ended by the server; reconnecting")
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._stopping.is_set() and (task is None or not task.cancelling()):
                    break  # stop() cancelled the call, not this task
                raise
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
                self._call = None
            failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.reconnect_delay(failures - 1))
            if self._stopping.is_set():
                break
            self._ledger.reconnects += 1

    def _dispatch(self, jobs: Sequence[pb.LeasedJob]) -> None:
        for lj in self._ledger.receive(jobs):
            self._running[lj.lease_token] = lj
            self._tasks[lj.lease_token] = asyncio.create_task(self._execute(lj), name=f"edgeq-job-{lj.id}")

    # ------------------------------------------------------------------ handlers (one task each)

    async def _execute(self, lj: LeasedJob) -> None:
        assert self._slots is not None and self._stopping is not None and self._settle_q is not None
        token = lj.lease_token
        try:
            async with self._slots:
                if token not in self._running:  # handed back by a drain that timed out
                    return
                if self._stopping.is_set() and self._running.pop(token, None) is not None:
                    # Received but not started when stop() came: handed back at once.
                    lj._settling = True
                    self._settle_q.put_nowait((lj, core.handback(lj, "worker stopping"), False))
                    self._check_idle()
                    return
                item = await self._call_handler(lj)
                if self._running.pop(token, None) is None:
                    if item is not None:
                        log.warning("job %s finished after it was given up (timeout or drain); its outcome is dropped",
                                    lj.id)
                    return
                if lj.lease_lost.is_set() or item is None:  # logged when it was lost; nothing to send
                    self._ledger.processed += 1
                    self._ledger.release([lj])
                    self._check_idle()
                    return
                lj._settling = True
                self._settle_q.put_nowait((lj, item, True))
                self._check_idle()
        finally:
            self._tasks.pop(token, None)

    async def _call_handler(self, lj: LeasedJob) -> pb.AckItem | pb.NackItem | None:
        """The handler's outcome; None when the worker cancelled it (given up)."""
        lj._started = self._now()
        _in_handler.set(True)
        try:
            with _tracing.handler_span(lj.queue, lj.id, lj.attempts, lj.headers):
                if self._is_async:
                    result = await self.handler(lj)  # type: ignore[misc]
                else:
                    result = await asyncio.to_thread(self.handler, lj)
            return core.done(lj, result)
        except asyncio.CancelledError:
            if lj.cancelled.is_set():  # given up by this worker: no outcome
                return None
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - an Exception, or a "panic": reported on the job
            return core.failed(lj, exc)

    def _give_up(self, lj: LeasedJob) -> None:
        """Stop waiting for ``lj``'s handler: its event set, its task cancelled."""
        lj.cancelled.set()
        task = self._tasks.get(lj.lease_token)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _check_idle(self) -> None:
        if self._draining and not self._running and self._idle is not None:
            self._idle.set()

    # ------------------------------------------------------------------ settling (settler task)

    async def _settle_loop(self) -> None:
        q = self._settle_q
        assert q is not None
        size, interval = self.settings.ack_batch_max, self.settings.ack_flush_interval
        done = False
        while not done:
            first = await q.get()
            if first is None:
                break
            batch = [first]
            if interval > 0:
                flush_at = self._now() + interval
                while len(batch) < size:
                    remaining = flush_at - self._now()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(q.get(), remaining)
                    except TimeoutError:
                        break
                    if item is None:
                        done = True
                        break
                    batch.append(item)
            while len(batch) < size and not done and not q.empty():  # whatever else is already queued
                item = q.get_nowait()
                if item is None:
                    done = True
                else:
                    batch.append(item)
            try:
                await self._flush(batch)
            except Exception:
                log.exception("settling %d outcomes failed", len(batch))
                self._ledger.release([lj for lj, _, _ in batch])

    async def _flush(self, batch: list[Outcome]) -> None:
        acks, nacks, runs = core.split(batch)
        self._ledger.processed += runs
        if acks:
            await self._settle_acks(acks)
        if nacks:
            await self._settle_nacks(nacks)

    async def _settle_acks(self, acks: list[tuple[LeasedJob, pb.AckItem]]) -> None:
        try:
            resp = await self._send("Ack", lambda: self.client.ack_raw([m for _, m in acks]))
        except EdgeqError as err:
            if core.isolate(err):
                if len(acks) > 1:  # one bad item refuses the whole call: isolate it
                    for a in acks:
                        await self._settle_acks([a])
                    return
                lj, _ = acks[0]
                await self._settle_nacks([(lj, core.refused_ack(lj, err))])
                return
            self._ledger.gave_up("Ack", [lj for lj, _ in acks], err)
            return
        self._ledger.settled("ack", [lj for lj, _ in acks], resp.outcomes)

    async def _settle_nacks(self, nacks: list[tuple[LeasedJob, pb.NackItem]]) -> None:
        try:
            resp = await self._send("Nack", lambda: self.client.nack_raw([m for _, m in nacks]))
        except EdgeqError as err:
            if len(nacks) > 1 and core.isolate(err):
                for n in nacks:
                    await self._settle_nacks([n])
                return
            self._ledger.gave_up("Nack", [lj for lj, _ in nacks], err)
            return
        self._ledger.settled("nack", [lj for lj, _ in nacks], resp.outcomes)

    async def _send(self, what: str, call: Callable[[], Awaitable[_R]]) -> _R:
        """``call()``, retried on transient errors while the leases may still be live."""
        give_up_at = self._now() + self.settings.lease_duration
        delay = self.settings.reconnect_backoff[0]
        while True:
            try:
                return await call()
            except EdgeqError as err:
                limit = give_up_at
                if self._draining and self._deadline is not None:
                    limit = min(limit, self._deadline + self.client.timeout)
                if not core.resend_after(what, err, self._now(), delay, limit):
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.reconnect_backoff[1])

    # ------------------------------------------------------------------ heartbeats (heartbeat task)

    async def _heartbeat_loop(self) -> None:
        tick = self.settings.tick
        timeout = self.settings.handler_timeout
        while True:
            await asyncio.sleep(tick)
            if timeout is not None:
                self._time_out(self._now() - timeout, timeout)
            if not self.settings.heartbeat:
                continue
            due = self._ledger.due(self._now() + tick)
            if due:
                try:
                    await self._extend(due)
                except Exception:
                    log.exception("heartbeat failed")

    def _time_out(self, started_before: float, timeout: float) -> None:
        assert self._settle_q is not None
        for lj in list(self._running.values()):
            if lj._started is None or lj._started > started_before or self._running.pop(lj.lease_token, None) is None:
                continue
            lj._settling = True
            self._give_up(lj)
            self._settle_q.put_nowait((lj, core.timed_out(lj, timeout), True))
            self._check_idle()

    async def _extend(self, due: list[LeasedJob]) -> None:
        sent = self._now()
        try:
            resp = await self.client.heartbeat_raw([lj.lease_token for lj in due], progress=self._ledger.progress(due))
        except EdgeqError as err:
            log.warning("heartbeat of %d leases failed (%s); retrying on the next tick", len(due), err)
            return
        for lj in self._ledger.extended(due, resp, sent):
            self._give_up(lj)

    # ------------------------------------------------------------------ drain

    async def _drain(self, loops: list[asyncio.Task[None]]) -> None:
        assert self._stopping is not None and self._idle is not None and self._settle_q is not None
        assert self._done is not None
        self._stopping.set()
        self._draining = True
        if self._deadline is None:  # a fatal stream error or a cancellation, not stop()
            self._deadline = self._now() + core.DEFAULT_DRAIN_SECONDS
        try:
            if self._running:
                self._idle.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), max(0.0, self._deadline - self._now()))
            leftover = [lj for lj in list(self._running.values()) if self._running.pop(lj.lease_token, None)]
            if leftover:
                log.warning("stop timeout: handing back %d unfinished jobs", len(leftover))
            for lj in leftover:
                lj._settling = True
                self._give_up(lj)
                self._settle_q.put_nowait((lj, core.handback(lj, "worker stopped before the job finished"), False))
            for task in list(self._tasks.values()):  # waiting for a slot: they end with nothing to do
                task.cancel()
            self._settle_q.put_nowait(None)
            await loops[0]
            for task in loops[1:]:
                task.cancel()
            await asyncio.gather(*loops[1:], *self._tasks.values(), return_exceptions=True)
        finally:
            if self._owns_client:
                await self.client.close()
            self._done.set()

    def __repr__(self) -> str:
        n = self.settings.concurrency
        return f"edgeq.aio.Worker({self.client.target!r}, {list(self.queues)!r}, concurrency={n})"
