"""Bearer-token authentication: no token -> UNAUTHENTICATED, the client token cannot call
admin RPCs (PERMISSION_DENIED), the admin token can do everything, and health and
reflection stay open."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc
from edgeq_server.app import EdgeqServer
from edgeq_server.clock import ManualClock
from edgeq_server.config import Config


@pytest.fixture
async def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    cfg = Config(port=0, db_path=str(tmp_path / "auth.db"), auth_token="admin-secret", client_token="worker-secret")
    srv = EdgeqServer(cfg, clock=ManualClock())
    await srv.start()
    yield srv
    await srv.stop(drain_seconds=0, grace_seconds=0)


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_tokens_gate_queue_service_but_not_health(server: EdgeqServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb_grpc.QueueServiceStub(ch)
        enqueue = pb.EnqueueRequest(jobs=[pb.JobSpec(queue="a", payload=b"x")])
        for metadata in ((), md("wrong")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Enqueue(enqueue, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stream = stub.Lease(pb.LeaseRequest(queues=["a"]))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream.read()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        job_id = (await stub.Enqueue(enqueue, metadata=md("worker-secret"))).results[0].job_id
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CancelJob(pb.CancelJobRequest(job_id=job_id), metadata=md("worker-secret"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "CancelJob" in (err.value.details() or "")
        resp = await stub.CancelJob(pb.CancelJobRequest(job_id=job_id), metadata=md("admin-secret"))
        assert resp.job.state == pb.JOB_STATE_CANCELLED

        health = health_pb2_grpc.HealthStub(ch)
        check = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert check.status == health_pb2.HealthCheckResponse.SERVING


async def test_node_to_node_calls_need_the_admin_token(server: EdgeqServer) -> None:
    from edgeq_server import replication_pb2 as repl_pb
    from edgeq_server import replication_pb2_grpc as repl_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = repl_grpc.ReplicationServiceStub(ch)
        for metadata, code in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            (md("worker-secret"), grpc.StatusCode.UNAUTHENTICATED),
            # Past authentication; a standalone node has no replication service to offer.
            (md("admin-secret"), grpc.StatusCode.UNIMPLEMENTED),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ReportPositions(iter([repl_pb.ReportPositionsRequest(node="x", txid=1)]), metadata=metadata)
            assert err.value.code() == code


async def test_an_unauthenticated_client_stream_is_refused_at_once_not_held_to_its_deadline() -> None:
    """A node-to-node client-streaming call (ReportPositions) without the admin token, that
    sends no message at all, is refused immediately: the refusal is of the method's own
    kind, so it does not wait for a first request message."""
    import time

    from edgeq_server import replication_pb2 as repl_pb
    from edgeq_server.auth import NodeAuth, Tokens

    seen: list[int] = []

    async def report(requests, context):  # type: ignore[no-untyped-def]
        async for _ in requests:
            seen.append(1)
        return repl_pb.ReportPositionsResponse()

    tokens = Tokens("admin-secret", "worker-secret")
    server = grpc.aio.server(interceptors=[NodeAuth("edgeq.v1.ReplicationService", tokens)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("edgeq.v1.ReplicationService", {
        "ReportPositions": grpc.stream_unary_rpc_method_handler(
            report, request_deserializer=repl_pb.ReportPositionsRequest.FromString,
            response_serializer=repl_pb.ReportPositionsResponse.SerializeToString),
    }),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call_fn = ch.stream_unary(
                "/edgeq.v1.ReplicationService/ReportPositions",
                request_serializer=repl_pb.ReportPositionsRequest.SerializeToString,
                response_deserializer=repl_pb.ReportPositionsResponse.FromString,
            )
            for metadata in ((), md("worker-secret")):
                call = call_fn(metadata=metadata, timeout=10)  # no message is ever written
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert time.monotonic() - started < 2, "held open instead of refused"
            # The admin token passes.
            call = call_fn(metadata=md("admin-secret"), timeout=10)
            await call.write(repl_pb.ReportPositionsRequest())
            await call.done_writing()
            await call
            assert seen == [1]
    finally:
        await server.stop(0)
