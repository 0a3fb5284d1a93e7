"""A real EdgeqServer on the test's event loop, a channel and a stub, for end-to-end tests
over gRPC (``test_e2e.py``, ``test_bad_input.py``).

``Harness`` is an async context manager rather than a fixture so each test picks its own
Config; the test modules wrap it in a one-line fixture. Time is a ManualClock: leases,
delays and retention move only with ``advance``. Waiting is always bounded: stream reads
use ``asyncio.wait_for`` and state changes are polled with a deadline, never slept for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import duration_pb2

from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc
from edgeq_server.app import EdgeqServer
from edgeq_server.clock import ManualClock
from edgeq_server.config import Config
from support.wait import until_async

T = TypeVar("T")

#: Upper bound for anything we wait on; a healthy run never gets near it.
TIMEOUT = 5.0
SERVICE = "edgeq.v1.QueueService"

LeaseCall = Any  # grpc.aio.UnaryStreamCall[pb.LeaseRequest, pb.LeaseResponse]


def dur(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMicroseconds(round(seconds * 1_000_000))
    return d


class Harness:
    """One server (restartable on the same database), its clock, a channel and a stub."""

    def __init__(self, tmp_path: Path, **config: Any) -> None:
        config.setdefault("keepalive_seconds", 0.2)
        self.config = Config(host="127.0.0.1", port=0, db_path=str(tmp_path / "q.db"), **config)
        self.clock = ManualClock()
        self.srv: EdgeqServer | None = None
        self.channel: grpc.aio.Channel | None = None
        self.stub: pb_grpc.QueueServiceStub = None  # type: ignore[assignment]
        self._calls: list[LeaseCall] = []

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Harness:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def server(self) -> EdgeqServer:
        assert self.srv is not None
        return self.srv

    async def start(self) -> None:
        self.srv = EdgeqServer(self.config, clock=self.clock)
        await self.srv.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.srv.port}")
        self.stub = pb_grpc.QueueServiceStub(self.channel)

    async def stop(self, drain_seconds: float = 0, grace_seconds: float = 0) -> None:
        for call in self._calls:
            call.cancel()
        self._calls.clear()
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self.srv is not None:
            srv, self.srv = self.srv, None
            await srv.stop(drain_seconds=drain_seconds, grace_seconds=grace_seconds)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @property
    def txid(self) -> int:
        """The server's last committed txid (moves only when a write changed rows)."""
        assert self.server.writer is not None
        return self.server.writer.txid

    # ------------------------------------------------------------------ producers

    async def enqueue(self, *specs: pb.JobSpec) -> pb.EnqueueResponse:
        resp: pb.EnqueueResponse = await self.stub.Enqueue(pb.EnqueueRequest(jobs=list(specs)))
        return resp

    async def put(self, queue: str = "q", payload: bytes = b"x", **spec: Any) -> str:
        """Enqueue one job; return its id."""
        return (await self.enqueue(pb.JobSpec(queue=queue, payload=payload, **spec))).results[0].job_id

    async def job(self, job_id: str) -> pb.Job:
        resp: pb.GetJobResponse = await self.stub.GetJob(pb.GetJobRequest(job_id=job_id))
        return resp.job

    async def stats(self, *queues: str) -> dict[str, pb.QueueStats]:
        resp = await self.stub.GetQueueStats(pb.GetQueueStatsRequest(queues=list(queues)))
        return {s.queue: s for s in resp.stats}

    async def all_jobs(self, **filters: Any) -> list[pb.Job]:
        jobs: list[pb.Job] = []
        token = ""
        while True:
            resp = await self.stub.ListJobs(pb.ListJobsRequest(page_size=1000, page_token=token, **filters))
            jobs.extend(resp.jobs)
            token = resp.next_page_token
            if not token:
                return jobs

    # ------------------------------------------------------------------ workers

    async def lease(
        self,
        *queues: str,
        max_in_flight: int = 1,
        lease_seconds: float | None = None,
        worker_id: str = "w",
    ) -> LeaseCall:
        """Open a Lease stream and wait until the server has accepted it."""
        req = pb.LeaseRequest(queues=list(queues or ("q",)), worker_id=worker_id, max_in_flight=max_in_flight)
        if lease_seconds is not None:
            req.lease_duration.CopyFrom(dur(lease_seconds))
        call = self.stub.Lease(req)
        self._calls.append(call)
        await asyncio.wait_for(call.initial_metadata(), TIMEOUT)
        return call

    async def read(self, call: LeaseCall) -> pb.LeaseResponse:
        msg = await asyncio.wait_for(call.read(), TIMEOUT)
        assert msg is not grpc.aio.EOF, "Lease stream ended"
        return msg  # type: ignore[no-any-return]

    async def take(self, call: LeaseCall, n: int) -> list[pb.LeasedJob]:
        """Read until exactly ``n`` jobs arrived (keepalives skipped); more is a failure."""
        got: list[pb.LeasedJob] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while len(got) < n:
            if loop.time() > deadline:  # keepalives keep coming; the jobs do not
                raise AssertionError(f"timed out: expected {n} jobs, got {len(got)}")
            got.extend((await self.read(call)).jobs)
        assert len(got) == n, f"expected {n} jobs, got {len(got)}"
        return got

    async def idle(self, call: LeaseCall) -> None:
        """The next message is a keepalive: the server had nothing to push for a full
        keepalive interval (no job is in flight towards this stream)."""
        msg = await self.read(call)
        assert not msg.jobs, f"unexpected delivery: {[j.job.id for j in msg.jobs]}"

    async def ack(self, *tokens: str, result: bytes = b"") -> list[int]:
        resp = await self.stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=t, result=result) for t in tokens]))
        return list(resp.outcomes)

    # ------------------------------------------------------------------ waiting

    async def until(self, check: Callable[[], Awaitable[T | None]], what: str = "condition") -> T:
        """Poll ``check`` until it returns something truthy, for at most TIMEOUT."""
        return await until_async(check, TIMEOUT, what)  # type: ignore[arg-type]  # None is falsy

    async def until_state(self, job_id: str, state: int) -> pb.Job:
        async def check() -> pb.Job | None:
            job = await self.job(job_id)
            return job if job.state == state else None

        return await self.until(check, f"job {job_id} to reach {pb.JobState.Name(state)}")


def maintenance_waiting(srv: EdgeqServer) -> bool:
    """The maintenance timer task is parked on its wake event (not mid-sweep)."""
    m = srv.maintenance
    task = getattr(m, "_task", None)
    wake: asyncio.Event | None = getattr(m, "_wake", None)
    if task is None or task.done() or wake is None or wake.is_set():
        return False
    return bool(getattr(wake, "_waiters", None))


async def stop_maintenance(srv: EdgeqServer) -> None:
    """Cancel the maintenance timer task until it has really ended (cleanup after a
    failed ``test_maintenance_stop_is_not_lost``: a swallowed cancel needs another)."""
    task: asyncio.Task[None] | None = getattr(srv.maintenance, "_task", None)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while task is not None and not task.done() and loop.time() < deadline:
        task.cancel()
        await asyncio.wait({task}, timeout=0.2)


async def rpc_error(aw: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """Await ``aw`` and return the AioRpcError it must raise."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(aw, TIMEOUT)
    return err.value
