"""QueueService: the RPC handlers. They validate (``validate.py``), submit writes to the
group-commit writer or run reads on reader threads (the store owns all SQL), tell the
dispatcher and the maintenance timers what changed, and convert results to protobuf
(``convert.py``). No SQL here, and no error handling beyond raising: ``status.py`` maps.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any

import grpc

from edgeq.v1 import queue_pb2 as pb

from . import convert, logs, metrics, validate
from .clock import MICROS, Clock
from .cluster import Cluster
from .config import Config
from .dispatch import Delivery, Dispatcher, End
from .errors import InvalidArgument, NotFound, Unavailable
from .ids import uuid7
from .maintenance import Maintenance
from .models import Backoff, Bulk, Cancelled, EnqueueResult, Extended, Job, JobState, LeaseOutcome, ScheduleRow
from .readers import Readers
from .store import Settled, Store
from .tokens import TokenCodec
from .writer import Writer

log = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext[Any, Any]


_RESULT = {
    (LeaseOutcome.OK, JobState.COMPLETED): "completed",
    (LeaseOutcome.OK, JobState.PENDING): "retried",
    (LeaseOutcome.OK, JobState.FAILED): "failed",
    (LeaseOutcome.STALE, None): "stale",
    (LeaseOutcome.INVALID, None): "invalid",
}


def _new_ids() -> Iterator[str]:
    return (uuid7() for _ in itertools.count())


class QueueService:
    def __init__(
        self,
        cfg: Config,
        clock: Clock,
        writer: Writer,
        readers: Readers,
        dispatcher: Dispatcher,
        maintenance: Maintenance,
        codec: TokenCodec,
        cluster: Cluster,
        node_info: Callable[[], pb.GetNodeInfoResponse],
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self._writer = writer
        self._readers = readers
        self._dispatcher = dispatcher
        self._maintenance = maintenance
        self._codec = codec
        self._position = cluster.position
        self._cluster = cluster
        self._node_info = node_info
        self._backoff = Backoff(int(cfg.backoff_base_seconds * MICROS), int(cfg.backoff_max_seconds * MICROS))

    # ------------------------------------------------------------------ helpers

    async def _at_least(self, min_txid: int) -> None:
        """Read-your-writes: wait (bounded) until this node has applied ``min_txid``."""
        wait = self._cfg.min_txid_wait_seconds
        if not await self._position.wait_for(min_txid, wait):
            raise Unavailable(
                f"min_txid {min_txid} not reached within {wait:g}s (this node is at {self._position.current()})"
            )

    # Post-commit bookkeeping runs as the writer's ``after`` callback, so it happens even if
    # the caller's deadline passed while the write was queued: a committed enqueue always
    # wakes its listeners and a committed ack always returns the stream's credit.

    def _after_enqueue(self, results: list[EnqueueResult], _txid: int) -> None:
        due: dict[str, int] = {}
        added: Counter[str] = Counter()
        for r in results:
            if not r.duplicate:
                due[r.queue] = min(r.run_at, due.get(r.queue, r.run_at))
                added[r.queue] += 1
        for queue, at in due.items():
            self._maintenance.note_due(queue, at)
            metrics.ENQUEUED.labels(metrics.queue_label(queue)).inc(added[queue])

    def _after_settle(self, settled: list[Settled], _txid: int) -> None:
        # A replayed settle (a client retrying the same Ack/Nack) changed nothing: no credit,
        # no metric, no timer.
        settled = [s for s in settled if not s.replay]
        for result, n in Counter(_RESULT[s.outcome, s.state] for s in settled).items():
            metrics.SETTLED.labels(result).inc(n)
        runs: dict[str, Any] = {}  # one label lookup per queue, not per item
        for s in settled:
            if s.ran_us is not None and s.queue:
                hist = runs.get(s.queue) or runs.setdefault(
                    s.queue, metrics.JOB_RUN.labels(metrics.queue_label(s.queue))
                )
                hist.observe(max(0, s.ran_us) / 1e6)
            if s.state is JobState.FAILED and s.job_id and s.queue:
                log.info("job failed for good", extra=logs.job_fields(s.job_id, s.queue))
        self._dispatcher.settled(s.job_id for s in settled if s.outcome is LeaseOutcome.OK and s.job_id)
        for s in settled:
            if s.outcome is LeaseOutcome.OK and s.state is JobState.PENDING and s.queue and s.run_at is not None:
                self._maintenance.note_due(s.queue, s.run_at)

    def _after_heartbeat(self, results: list[Extended], _txid: int) -> None:
        # A heartbeat may shorten a lease (extend_by below what is left): the expiry timer
        # must learn the new, earlier time.
        ends = [r.lease_expires_at for r in results if r.outcome is LeaseOutcome.OK and r.lease_expires_at is not None]
        if ends:
            self._maintenance.note_lease(min(ends))

    def _after_cancel(self, result: Cancelled, _txid: int) -> None:
        if result.was_running:
            self._dispatcher.settled((result.job.id,))

    def _after_retry(self, job: Job, _txid: int) -> None:
        self._maintenance.note_due(job.queue, job.run_at)

    def _after_bulk(self, bulk: Bulk, _txid: int) -> None:
        if bulk.ended:
            self._dispatcher.settled(tuple(bulk.ended))
        pending = [j for j in bulk.jobs if j.state is JobState.PENDING]
        if pending:
            self._maintenance.note_due(pending[0].queue, min(j.run_at for j in pending))

    # ------------------------------------------------------------------ writes

    async def Enqueue(self, request: pb.EnqueueRequest, context: Ctx) -> pb.EnqueueResponse:
        specs = validate.enqueue(request, self._cfg, self._clock.now())
        results, txid = await self._writer.submit(
            lambda s, now: s.enqueue(specs, now, _new_ids()), after=self._after_enqueue, rows=len(specs)
        )
        return pb.EnqueueResponse(
            results=[
                pb.EnqueueResult(
                    job_id=r.job_id, duplicate=r.duplicate, idempotency_key=spec.idempotency_key or "", unique=r.unique
                )
                for r, spec in zip(results, specs, strict=True)
            ],
            txid=txid,
        )

    async def Ack(self, request: pb.AckRequest, context: Ctx) -> pb.AckResponse:
        items = validate.ack(request, self._codec, self._cfg)
        settled, txid = await self._writer.submit(
            lambda s, now: s.ack(items, now), after=self._after_settle, rows=len(items)
        )
        return pb.AckResponse(outcomes=[convert.OUTCOME_TO_PROTO[x.outcome] for x in settled], txid=txid)

    async def Nack(self, request: pb.NackRequest, context: Ctx) -> pb.NackResponse:
        items = validate.nack(request, self._codec, self._cfg)
        settled, txid = await self._writer.submit(
            lambda s, now: s.nack(items, self._backoff, now), after=self._after_settle, rows=len(items)
        )
        return pb.NackResponse(outcomes=[convert.OUTCOME_TO_PROTO[x.outcome] for x in settled], txid=txid)

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Ctx) -> pb.HeartbeatResponse:
        refs, extend, progress = validate.heartbeat(request, self._codec, self._cfg)
        results, txid = await self._writer.submit(
            lambda s, now: s.heartbeat(refs, extend, now, progress), after=self._after_heartbeat, rows=len(refs)
        )
        resp = pb.HeartbeatResponse(outcomes=[convert.OUTCOME_TO_PROTO[r.outcome] for r in results], txid=txid)
        for r in results:
            resp.lease_expires_at.append(convert.timestamp(r.lease_expires_at or 0))
        return resp

    async def CancelJob(self, request: pb.CancelJobRequest, context: Ctx) -> pb.CancelJobResponse:
        job_id = validate.job_id(request.job_id)
        cancelled, txid = await self._writer.submit(
            lambda s, now: s.cancel(job_id, now), after=self._after_cancel, rows=1
        )
        return pb.CancelJobResponse(job=convert.job(cancelled.job), txid=txid)

    async def RetryJob(self, request: pb.RetryJobRequest, context: Ctx) -> pb.RetryJobResponse:
        job_id = validate.job_id(request.job_id)
        job, txid = await self._writer.submit(lambda s, now: s.retry(job_id, now), after=self._after_retry, rows=1)
        return pb.RetryJobResponse(job=convert.job(job), txid=txid)

    async def RetryJobs(self, request: pb.RetryJobsRequest, context: Ctx) -> pb.RetryJobsResponse:
        sel, limit = validate.selection(request, (JobState.FAILED, JobState.CANCELLED))
        bulk, txid = await self._writer.submit(
            lambda s, now: s.retry_many(sel, limit, now), after=self._after_bulk, rows=limit
        )
        return pb.RetryJobsResponse(count=len(bulk.jobs), more=bulk.more, txid=txid)

    async def CancelJobs(self, request: pb.CancelJobsRequest, context: Ctx) -> pb.CancelJobsResponse:
        sel, limit = validate.selection(request, (JobState.PENDING, JobState.RUNNING))
        bulk, txid = await self._writer.submit(
            lambda s, now: s.cancel_many(sel, limit, now), after=self._after_bulk, rows=limit
        )
        return pb.CancelJobsResponse(count=len(bulk.jobs), more=bulk.more, txid=txid)

    async def UpsertSchedule(self, request: pb.UpsertScheduleRequest, context: Ctx) -> pb.UpsertScheduleResponse:
        from . import schedules

        sch = validate.schedule(request, self._cfg, self._clock.now())

        def upsert(s: Store, now: int) -> ScheduleRow:
            return s.upsert_schedule(replace(sch, next_run_at=schedules.next_after(sch.cron, sch.time_zone, now)), now)

        stored, txid = await self._writer.submit(upsert, after=self._after_schedule)
        return pb.UpsertScheduleResponse(schedule=convert.schedule(stored), txid=txid)

    async def ListSchedules(self, request: pb.ListSchedulesRequest, context: Ctx) -> pb.ListSchedulesResponse:
        await self._at_least(request.min_txid)
        rows = await self._readers.run(Store.list_schedules)
        return pb.ListSchedulesResponse(schedules=[convert.schedule(r) for r in rows])

    async def DeleteSchedule(self, request: pb.DeleteScheduleRequest, context: Ctx) -> pb.DeleteScheduleResponse:
        name = validate.schedule_name(request.name)
        deleted, txid = await self._writer.submit(lambda s, now: s.delete_schedule(name))
        return pb.DeleteScheduleResponse(deleted=deleted, txid=txid)

    async def PauseSchedule(self, request: pb.PauseScheduleRequest, context: Ctx) -> pb.PauseScheduleResponse:
        name = validate.schedule_name(request.name)
        stored, txid = await self._writer.submit(lambda s, now: s.pause_schedule(name, True, None, now))
        return pb.PauseScheduleResponse(schedule=convert.schedule(stored), txid=txid)

    async def ResumeSchedule(self, request: pb.ResumeScheduleRequest, context: Ctx) -> pb.ResumeScheduleResponse:
        from . import schedules

        name = validate.schedule_name(request.name)

        def resume(s: Store, now: int) -> ScheduleRow:
            current = s.get_schedule(name)
            if current is None:
                raise NotFound(f"schedule {name} not found")
            if not current.paused:
                return current
            return s.pause_schedule(name, False, schedules.next_after(current.cron, current.time_zone, now), now)

        stored, txid = await self._writer.submit(resume, after=self._after_schedule)
        return pb.ResumeScheduleResponse(schedule=convert.schedule(stored), txid=txid)

    def _after_schedule(self, sch: ScheduleRow, _txid: int) -> None:
        self._maintenance.note_schedule(sch.next_run_at)

    async def SetRateLimit(self, request: pb.SetRateLimitRequest, context: Ctx) -> pb.SetRateLimitResponse:
        queue, jobs, period, header = validate.rate_limit(request)
        _, txid = await self._writer.submit(
            lambda s, now: s.set_rate_limit(queue, jobs, period, now, header),
            after=lambda _r, _t: self._dispatcher.notify((queue,)),  # a raised or removed limit frees jobs now
        )
        return pb.SetRateLimitResponse(txid=txid)

    async def SetGroupWeight(self, request: pb.SetGroupWeightRequest, context: Ctx) -> pb.SetGroupWeightResponse:
        queue, group, weight = validate.group_weight(request)
        _, txid = await self._writer.submit(lambda s, now: s.set_group_weight(queue, group, weight, now))
        return pb.SetGroupWeightResponse(txid=txid)

    async def ListGroups(self, request: pb.ListGroupsRequest, context: Ctx) -> pb.ListGroupsResponse:
        queue, after, size = validate.list_groups(request)
        await self._at_least(request.min_txid)
        now = self._clock.now()
        rows, more = await self._readers.run(lambda s: s.list_groups(queue, after, size, now))
        return pb.ListGroupsResponse(
            groups=[pb.Group(group=g.group, weight=g.weight, pending=g.pending, running=g.running) for g in rows],
            next_page_token=validate.encode_group_token(queue, rows[-1].group) if more else "",
        )

    async def PauseQueue(self, request: pb.PauseQueueRequest, context: Ctx) -> pb.PauseQueueResponse:
        queue = validate.queue_name(request.queue, "queue")
        _, txid = await self._writer.submit(lambda s, now: s.set_paused(queue, True, now))
        return pb.PauseQueueResponse(txid=txid)

    async def ResumeQueue(self, request: pb.ResumeQueueRequest, context: Ctx) -> pb.ResumeQueueResponse:
        queue = validate.queue_name(request.queue, "queue")
        _, txid = await self._writer.submit(
            lambda s, now: s.set_paused(queue, False, now), after=lambda _r, _t: self._dispatcher.notify((queue,))
        )
        return pb.ResumeQueueResponse(txid=txid)

    # ------------------------------------------------------------------ reads

    async def job_queue(self, job_id: str) -> str | None:
        """The queue of a job this node holds (None if it holds none by that id): the
        auth guard's check of a queue-restricted token on CancelJob/RetryJob."""
        try:
            valid = validate.job_id(job_id)
        except InvalidArgument:
            return None
        job = await self._readers.run(lambda s: s.get_job(valid))
        return None if job is None else job.queue

    async def GetJob(self, request: pb.GetJobRequest, context: Ctx) -> pb.GetJobResponse:
        job_id = validate.job_id(request.job_id)
        await self._at_least(request.min_txid)
        job = await self._readers.run(lambda s: s.get_job(job_id))
        if job is None:
            # Accepted at this node's edge: still waiting (ACCEPTED), or drained to the
            # primary at a txid this node may not have applied yet (wait for it).
            accepted = await self._cluster.accepted(job_id)
            if accepted is not None and accepted.job is not None:
                return pb.GetJobResponse(job=accepted.job)
            stored = job_id
            if accepted is not None:
                await self._at_least(accepted.txid)
                stored = accepted.stored_id
            job = await self._readers.run(lambda s: s.get_job(stored))
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return pb.GetJobResponse(job=convert.job(job))

    async def ListJobs(self, request: pb.ListJobsRequest, context: Ctx) -> pb.ListJobsResponse:
        p = validate.list_jobs(request)
        await self._at_least(request.min_txid)
        rows = await self._readers.run(lambda s: s.list_jobs(p.queue, p.state, p.after_rowid, p.page_size, p.search))
        token = ""
        if len(rows) == p.page_size:
            token = validate.encode_page_token(rows[-1][0], p.queue, p.state, p.search)
        return pb.ListJobsResponse(jobs=[convert.job(j) for _, j in rows], next_page_token=token)

    async def GetQueueStats(self, request: pb.GetQueueStatsRequest, context: Ctx) -> pb.GetQueueStatsResponse:
        queues = validate.queue_list(request.queues)
        await self._at_least(request.min_txid)
        now = self._clock.now()
        counts = await self._readers.run(lambda s: Store.queue_stats(s, queues, now))
        stats = {c.queue: convert.queue_stats(c, now) for c in counts}
        for queue, n in (await self._cluster.accepted_by_queue()).items():
            if not queues or queue in queues:
                stats.setdefault(queue, pb.QueueStats(queue=queue)).accepted = n
        return pb.GetQueueStatsResponse(stats=[stats[q] for q in sorted(stats)])

    async def GetNodeInfo(self, request: pb.GetNodeInfoRequest, context: Ctx) -> pb.GetNodeInfoResponse:
        return self._node_info()

    # ------------------------------------------------------------------ stream

    def _messages(self, deliveries: list[Delivery]) -> Iterator[pb.LeaseResponse]:
        """Pack deliveries into as few LeaseResponses as fit under the message limit (one
        job always fits: payloads are capped below it)."""
        limit = self._cfg.max_message_bytes - 4096
        # Fast path (the usual case): even at every variable field's maximum (headers 16 KiB,
        # error message 64 KiB, ids and keys) the batch fits, so skip measuring each item.
        if sum(len(d.job.payload) + len(d.job.result or b"") + 96 * 1024 for d in deliveries) < limit:
            yield pb.LeaseResponse(jobs=[convert.leased(d) for d in deliveries])
            return
        message = pb.LeaseResponse()
        size = 0
        for d in deliveries:
            item = convert.leased(d)
            n = item.ByteSize() + 8  # field tag and length prefix
            if message.jobs and size + n > limit:
                yield message
                message, size = pb.LeaseResponse(), 0
            message.jobs.append(item)
            size += n
        if message.jobs:
            yield message

    async def Lease(self, request: pb.LeaseRequest, context: Ctx) -> AsyncIterator[pb.LeaseResponse]:
        p = validate.lease(request, self._cfg)
        if not self._dispatcher.accepting:
            raise Unavailable("server is draining; reconnect to another node or retry")
        # Headers go out now, so the worker knows the stream is established before any job.
        await context.send_initial_metadata(())
        stream = self._dispatcher.open(p.queues, p.worker_id, p.max_in_flight, p.lease_us)
        keepalive = self._cfg.keepalive_seconds
        try:
            while True:
                try:
                    async with asyncio.timeout(keepalive):  # not wait_for: see maintenance._run
                        batch = await stream.sends.get()
                except TimeoutError:
                    yield pb.LeaseResponse()  # keepalive
                    continue
                if isinstance(batch, End):
                    raise batch.error()
                deliveries: list[Delivery] = list(batch)
                while not stream.sends.empty():  # coalesce whatever else is ready
                    more = stream.sends.get_nowait()
                    if isinstance(more, End):
                        stream.sends.put_nowait(more)
                        break
                    deliveries.extend(more)
                for message in self._messages(deliveries):
                    yield message
        finally:
            self._dispatcher.close(stream)
