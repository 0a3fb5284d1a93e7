"""``edgeq.aio``: the Client and the Worker for asyncio programs, on grpc.aio.

The same API as ``edgeq.Client`` with ``await`` (and ``async for`` over ``list``), the same
behaviour, and the same code for it: requests are built, generated keys added, writes
answered CommittedNotReplicated resent and responses read by the helpers the sync Client
uses (``_client``); this module only awaits the calls and the pauses.

    async with edgeq.aio.Client("127.0.0.1:50051") as client:
        result = await client.enqueue("emails", b'{"to": "a@b.c"}')
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc

from ._aio_worker import Worker
from ._client import (
    BATCH_MAX,
    _ack_items,
    _chunks,
    _enqueue_request,
    _enqueue_results,
    _heartbeat_request,
    _lease_request,
    _list_request,
    _nack_items,
    _rate_limit_request,
    _selection,
    _upsert_schedule_request,
    _WriteRetry,
)
from ._config import DEFAULT_TARGET, DEFAULT_TIMEOUT, TLSOption, create_aio_channel
from ._errors import CommittedNotReplicated, DeadlineExceededError, error_from_rpc
from ._models import (
    Durability,
    EnqueueResult,
    Job,
    JobSpec,
    JobSpecLike,
    JobState,
    LeaseOutcome,
    NodeInfo,
    QueueStats,
    Uniqueness,
    to_job_spec,
)
from ._worker_core import LeasedJob, WorkerStats

__all__ = ["Client", "LeasedJob", "Worker", "WorkerStats"]

_Resp = TypeVar("_Resp")


class Client:
    """An asyncio connection to an edgeq server: ``edgeq.Client``'s arguments and methods,
    awaited. Safe to share between the tasks of one event loop."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        channel: grpc.aio.Channel | None = None,
        session_consistency: bool = False,
        token: str | None = None,
        durability: Durability | str | None = None,
        tls: TLSOption = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.durability = None if durability is None else Durability(durability)
        self.target = target
        self.timeout = timeout
        self.session_consistency = session_consistency
        self._owns_channel = channel is None
        self._channel = channel if channel is not None else create_aio_channel(target, tls=tls)
        #: The generated stub (grpc.aio), for anything this class does not wrap.
        self.stub = pb_grpc.QueueServiceStub(self._channel)
        self.metadata: tuple[tuple[str, str], ...] | None = (
            (("authorization", f"Bearer {token}"),) if token else None
        )
        self._txid = 0
        self._closed = False

    @property
    def last_txid(self) -> int:
        return self._txid

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._owns_channel:
                await self._channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing

    async def _call(self, method: Callable[..., Awaitable[_Resp]], request: Any, within: float | None = None) -> _Resp:
        try:
            return await method(request, timeout=self.timeout if within is None else within, metadata=self.metadata)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None

    async def _write(self, method: Callable[..., Awaitable[_Resp]], request: Any) -> _Resp:
        retry = _WriteRetry(self.timeout)
        while True:
            try:
                return await self._call(method, request, retry.remaining())
            except CommittedNotReplicated as err:
                await asyncio.sleep(retry.pause(err))
            except DeadlineExceededError as err:
                raise retry.deadline_exceeded(err)  # noqa: B904 - err is its context either way

    def _note_txid(self, txid: int) -> int:
        self._txid = max(self._txid, txid)
        return txid

    def _min_txid(self) -> int:
        return self._txid if self.session_consistency else 0

    # ------------------------------------------------------------------ producing

    async def enqueue(
        self,
        queue: str,
        payload: bytes,
        *,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        max_attempts: int = 0,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        durability: Durability | str | None = None,
        unique_key: str | None = None,
        uniqueness: Uniqueness | str | None = None,
        concurrency_key: str | None = None,
        concurrency_limit: int = 0,
        group: str | None = None,
    ) -> EnqueueResult:
        """As ``edgeq.Client.enqueue``."""
        spec = JobSpec(
            queue, payload, delay, run_at, priority, max_attempts, idempotency_key, headers, unique_key, uniqueness,
            concurrency_key, concurrency_limit, group,
        )
        return (await self._enqueue([spec.to_proto()], durability))[0]

    async def enqueue_many(
        self, specs: Iterable[JobSpecLike], *, durability: Durability | str | None = None
    ) -> builtins.list[EnqueueResult]:
        """As ``edgeq.Client.enqueue_many`` (calls of at most 1000 jobs, in order)."""
        messages = [to_job_spec(s) for s in specs]
        results: builtins.list[EnqueueResult] = []
        for chunk in _chunks(messages, BATCH_MAX):
            results.extend(await self._enqueue(chunk, durability))
        return results

    async def _enqueue(
        self, messages: Sequence[pb.JobSpec], durability: Durability | str | None
    ) -> builtins.list[EnqueueResult]:
        request, auto = _enqueue_request(messages, self.durability if durability is None else Durability(durability))
        try:
            resp: pb.EnqueueResponse = await self._write(self.stub.Enqueue, request)
        except CommittedNotReplicated as err:
            err.idempotency_keys = tuple(job.idempotency_key for job in request.jobs)
            raise
        return _enqueue_results(request, resp, auto, self._note_txid(resp.txid))

    # ------------------------------------------------------------------ reading

    async def get(self, job_id: str) -> Job:
        resp: pb.GetJobResponse = await self._call(
            self.stub.GetJob, pb.GetJobRequest(job_id=job_id, min_txid=self._min_txid())
        )
        return Job.from_proto(resp.job)

    async def list(
        self, queue: str | None = None, state: JobState | str | None = None, page_size: int = 100, *,
        search: str = "",
    ) -> AsyncIterator[Job]:
        """``async for job in client.list(...)``: pages fetched as the iteration advances."""
        req = _list_request(queue, state, page_size, self._min_txid(), search)
        while True:
            resp: pb.ListJobsResponse = await self._call(self.stub.ListJobs, req)
            for m in resp.jobs:
                yield Job.from_proto(m)
            if not resp.next_page_token:
                return
            req.page_token = resp.next_page_token

    async def stats(self, *queues: str) -> builtins.list[QueueStats]:
        resp: pb.GetQueueStatsResponse = await self._call(
            self.stub.GetQueueStats, pb.GetQueueStatsRequest(queues=queues, min_txid=self._min_txid())
        )
        return [QueueStats.from_proto(s) for s in resp.stats]

    async def node_info(self) -> NodeInfo:
        return NodeInfo.from_proto(await self._call(self.stub.GetNodeInfo, pb.GetNodeInfoRequest()))

    # ------------------------------------------------------------------ admin

    async def cancel(self, job_id: str) -> Job:
        resp: pb.CancelJobResponse = await self._write(self.stub.CancelJob, pb.CancelJobRequest(job_id=job_id))
        self._note_txid(resp.txid)
        return Job.from_proto(resp.job)

    async def retry(self, job_id: str) -> Job:
        resp: pb.RetryJobResponse = await self._write(self.stub.RetryJob, pb.RetryJobRequest(job_id=job_id))
        self._note_txid(resp.txid)
        return Job.from_proto(resp.job)

    async def retry_jobs(
        self, queue: str, state: JobState | str | None = None, *, created_after: datetime | None = None,
        created_before: datetime | None = None, batch: int = 0,
    ) -> int:
        request = pb.RetryJobsRequest(selection=_selection(queue, state, created_after, created_before), limit=batch)
        return await self._bulk(self.stub.RetryJobs, request)

    async def cancel_jobs(
        self, queue: str, state: JobState | str | None = None, *, created_after: datetime | None = None,
        created_before: datetime | None = None, batch: int = 0,
    ) -> int:
        request = pb.CancelJobsRequest(selection=_selection(queue, state, created_after, created_before), limit=batch)
        return await self._bulk(self.stub.CancelJobs, request)

    async def _bulk(self, method: Any, request: Any) -> int:
        total = 0
        while True:
            resp = await self._write(method, request)
            self._note_txid(resp.txid)
            total += int(resp.count)
            if not resp.more:
                return total

    async def set_rate_limit(
        self, queue: str, jobs: int, per: float | timedelta = 1.0, *, key_header: str | None = None
    ) -> None:
        """As ``edgeq.Client.set_rate_limit``."""
        request = _rate_limit_request(queue, jobs, per, key_header)
        resp: pb.SetRateLimitResponse = await self._write(self.stub.SetRateLimit, request)
        self._note_txid(resp.txid)

    async def pause(self, queue: str) -> None:
        resp: pb.PauseQueueResponse = await self._write(self.stub.PauseQueue, pb.PauseQueueRequest(queue=queue))
        self._note_txid(resp.txid)

    async def resume(self, queue: str) -> None:
        resp: pb.ResumeQueueResponse = await self._write(self.stub.ResumeQueue, pb.ResumeQueueRequest(queue=queue))
        self._note_txid(resp.txid)

    # ------------------------------------------------------------------ fair groups

    async def set_group_weight(self, queue: str, group: str, weight: int) -> None:
        """As ``edgeq.Client.set_group_weight``."""
        request = pb.SetGroupWeightRequest(queue=queue, group=group, weight=weight)
        resp: pb.SetGroupWeightResponse = await self._write(self.stub.SetGroupWeight, request)
        self._note_txid(resp.txid)

    async def list_groups(self, queue: str) -> builtins.list[pb.Group]:
        """As ``edgeq.Client.list_groups`` (all pages)."""
        request = pb.ListGroupsRequest(queue=queue, min_txid=self._min_txid())
        groups: builtins.list[pb.Group] = []
        while True:
            resp: pb.ListGroupsResponse = await self._call(self.stub.ListGroups, request)
            groups.extend(resp.groups)
            if not resp.next_page_token:
                return groups
            request.page_token = resp.next_page_token

    # ------------------------------------------------------------------ schedules

    async def upsert_schedule(
        self, name: str, queue: str, cron: str, payload: bytes = b"", *, time_zone: str = "UTC",
        headers: Mapping[str, str] | None = None, priority: int = 0, max_attempts: int = 0,
        overlap: str = "allow", missed: str = "skip",
    ) -> pb.Schedule:
        """As ``edgeq.Client.upsert_schedule``."""
        request = _upsert_schedule_request(
            name, queue, cron, payload, time_zone, headers, priority, max_attempts, overlap, missed
        )
        resp: pb.UpsertScheduleResponse = await self._write(self.stub.UpsertSchedule, request)
        self._note_txid(resp.txid)
        return resp.schedule

    async def schedules(self) -> builtins.list[pb.Schedule]:
        """As ``edgeq.Client.schedules``."""
        request = pb.ListSchedulesRequest(min_txid=self._min_txid())
        resp: pb.ListSchedulesResponse = await self._call(self.stub.ListSchedules, request)
        return builtins.list(resp.schedules)

    async def delete_schedule(self, name: str) -> bool:
        """As ``edgeq.Client.delete_schedule``."""
        resp: pb.DeleteScheduleResponse = await self._write(
            self.stub.DeleteSchedule, pb.DeleteScheduleRequest(name=name)
        )
        self._note_txid(resp.txid)
        return bool(resp.deleted)

    async def pause_schedule(self, name: str) -> pb.Schedule:
        """As ``edgeq.Client.pause_schedule``."""
        resp: pb.PauseScheduleResponse = await self._write(self.stub.PauseSchedule, pb.PauseScheduleRequest(name=name))
        self._note_txid(resp.txid)
        return resp.schedule

    async def resume_schedule(self, name: str) -> pb.Schedule:
        """As ``edgeq.Client.resume_schedule``."""
        resp: pb.ResumeScheduleResponse = await self._write(
            self.stub.ResumeSchedule, pb.ResumeScheduleRequest(name=name)
        )
        self._note_txid(resp.txid)
        return resp.schedule

    # ------------------------------------------------------------------ leases (low level)

    async def ack(self, items: Iterable[str | tuple[str, bytes | None] | pb.AckItem]) -> builtins.list[LeaseOutcome]:
        return [LeaseOutcome.from_proto(o) for o in (await self.ack_raw(_ack_items(items))).outcomes]

    async def nack(
        self,
        items: Iterable[str | pb.NackItem],
        *,
        error_message: str = "",
        retry_delay: float | timedelta | None = None,
        terminal: bool = False,
    ) -> builtins.list[LeaseOutcome]:
        messages = _nack_items(items, error_message, retry_delay, terminal)
        return [LeaseOutcome.from_proto(o) for o in (await self.nack_raw(messages)).outcomes]

    async def heartbeat(
        self, lease_tokens: Iterable[str], *, extend_by: float | timedelta | None = None
    ) -> builtins.list[LeaseOutcome]:
        resp = await self.heartbeat_raw(builtins.list(lease_tokens), extend_by=extend_by)
        return [LeaseOutcome.from_proto(o) for o in resp.outcomes]

    async def ack_raw(self, items: Sequence[pb.AckItem]) -> pb.AckResponse:
        out = pb.AckResponse()
        out.txid = await self._settle(self.stub.Ack, pb.AckRequest, items, out.outcomes)
        return out

    async def nack_raw(self, items: Sequence[pb.NackItem]) -> pb.NackResponse:
        out = pb.NackResponse()
        out.txid = await self._settle(self.stub.Nack, pb.NackRequest, items, out.outcomes)
        return out

    async def _settle(self, method: Any, request: Any, items: Sequence[Any], outcomes: Any) -> int:
        """As the sync Client's: calls of at most BATCH_MAX, outcomes collected, the last txid."""
        txid = 0
        for chunk in _chunks(items, BATCH_MAX):
            resp = await self._write(method, request(items=chunk))
            outcomes.extend(resp.outcomes)
            txid = self._note_txid(max(txid, resp.txid))
        return txid

    async def heartbeat_raw(
        self, lease_tokens: Sequence[str], *, extend_by: float | timedelta | None = None,
        progress: Mapping[str, pb.Progress] | None = None,
    ) -> pb.HeartbeatResponse:
        out = pb.HeartbeatResponse()
        for chunk in _chunks(lease_tokens, BATCH_MAX):
            request = _heartbeat_request(chunk, extend_by, progress)
            resp: pb.HeartbeatResponse = await self._write(self.stub.Heartbeat, request)
            out.outcomes.extend(resp.outcomes)
            out.lease_expires_at.extend(resp.lease_expires_at)
            out.txid = self._note_txid(max(out.txid, resp.txid))
        return out

    def lease_stream(
        self,
        queues: Sequence[str],
        *,
        worker_id: str = "",
        max_in_flight: int = 1,
        lease_duration: float | timedelta | None = None,
    ) -> Any:
        """A raw Lease stream (grpc.aio call, no deadline): ``async for`` its LeaseResponses;
        ``cancel()`` it when done."""
        req = _lease_request(queues, worker_id, max_in_flight, lease_duration)
        return self.stub.Lease(req, metadata=self.metadata)

    def __repr__(self) -> str:
        return f"edgeq.aio.Client({self.target!r}, timeout={self.timeout:g})"
