"""Connection and stream limits (issue 11): Lease streams per connection and in total
answer RESOURCE_EXHAUSTED (TOO_MANY_STREAMS) with a retry delay and open nothing; idle
connections are closed and old ones asked to reconnect (gRPC server options)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.serverthread import ServerThread

from edgeq._errors import error_from_rpc
from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[ServerThread]:
    srv = ServerThread(str(tmp_path / "l.db"), max_lease_streams=3, max_lease_streams_per_connection=2)
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


def _open(stub: pb_grpc.QueueServiceStub, worker: str) -> grpc.Future:
    call = stub.Lease(pb.LeaseRequest(queues=["q"], worker_id=worker), timeout=30)
    call.initial_metadata()  # established (or refused)
    return call


def _refused(call: grpc.Future) -> tuple[grpc.StatusCode, str, float]:
    with pytest.raises(grpc.RpcError) as err:
        next(call)
    refused = error_from_rpc(err.value)
    return refused.code, refused.reason, refused.retry_delay or 0.0


def test_lease_streams_are_limited_per_connection_and_in_total(limited: ServerThread) -> None:
    with grpc.insecure_channel(limited.target) as a, grpc.insecure_channel(
        limited.target, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as b:
        sa, sb = pb_grpc.QueueServiceStub(a), pb_grpc.QueueServiceStub(b)
        one, two = _open(sa, "a1"), _open(sa, "a2")
        code, reason, delay = _refused(_open(sa, "a3"))
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS") and delay > 0
        three = _open(sb, "b1")  # another connection may open its own
        code, reason, _ = _refused(_open(sb, "b2"))  # but the node holds 3 in all
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
        assert limited.server is not None and limited.server.dispatcher is not None
        assert limited.server.dispatcher.stream_count == 3  # the refused ones opened nothing
        one.cancel()
        deadline = time.monotonic() + 5
        while limited.server.dispatcher.stream_count > 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        four = _open(sa, "a4")  # room again
        sa.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="q", payload=b"x")]), timeout=5)
        for call in (two, three, four):
            call.cancel()


def test_idle_connections_are_closed_and_old_ones_told_to_reconnect(tmp_path: Path) -> None:
    srv = ServerThread(str(tmp_path / "i.db"), max_connection_idle_seconds=1.0, max_connection_age_seconds=1.0,
                       max_connection_age_grace_seconds=1.0)
    srv.start()
    try:
        with grpc.insecure_channel(srv.target) as ch:
            stub = pb_grpc.QueueServiceStub(ch)
            stub.GetQueueStats(pb.GetQueueStatsRequest(), timeout=5)
            assert ch._channel.check_connectivity_state(False) == 2  # type: ignore[attr-defined]  # READY
            # A Lease stream outliving age + grace is ended (UNAVAILABLE): the worker reconnects.
            call = stub.Lease(pb.LeaseRequest(queues=["q"], worker_id="w"), timeout=30)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                for _ in call:
                    pass
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            assert time.monotonic() - started < 10
            # And a connection left without RPCs is closed: the channel goes back to IDLE.
            deadline = time.monotonic() + 10
            while ch._channel.check_connectivity_state(False) != 0 and time.monotonic() < deadline:  # type: ignore[attr-defined]
                time.sleep(0.1)
            assert ch._channel.check_connectivity_state(False) == 0  # type: ignore[attr-defined]  # IDLE
            stub.GetQueueStats(pb.GetQueueStatsRequest(), timeout=5)  # reconnects by itself
    finally:
        srv.close()


def test_a_client_pinging_too_often_is_sent_away_and_one_pinging_politely_is_not(tmp_path: Path) -> None:
    """Keepalive enforcement: pings every 100 ms without data get GOAWAY (after 2 strikes)
    and the stream ends UNAVAILABLE; pings every second (what nodes send) are fine."""
    srv = ServerThread(str(tmp_path / "p.db"))
    srv.start()
    try:
        def stream_with_pings(interval_ms: int) -> grpc.StatusCode | None:
            options = [("grpc.keepalive_time_ms", interval_ms), ("grpc.keepalive_timeout_ms", 5_000),
                       ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0),
                       ("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(srv.target, options=options) as ch:
                call = pb_grpc.QueueServiceStub(ch).Lease(pb.LeaseRequest(queues=["q"], worker_id="p"), timeout=4)
                try:
                    for _ in call:
                        pass
                except grpc.RpcError as exc:
                    return exc.code()  # type: ignore[attr-defined, no-any-return]
                return None

        assert stream_with_pings(100) == grpc.StatusCode.UNAVAILABLE
        assert stream_with_pings(1_000) == grpc.StatusCode.DEADLINE_EXCEEDED  # lived until its deadline
    finally:
        srv.close()


def test_a_retry_delay_is_also_grpc_retry_pushback_so_sdk_retries_wait_for_it() -> None:
    """gRPC's own retry policy (Python and Go SDKs) honours grpc-retry-pushback-ms: every
    error with a RetryInfo delay carries it too; errors without one do not."""
    from edgeq_server import errors, status

    trailers = dict(status.to_status(errors.Unavailable("no primary", reason="NO_PRIMARY", retry_after=0.5))
                    .trailing_metadata())
    assert trailers["grpc-retry-pushback-ms"] == "500" and "grpc-status-details-bin" in trailers
    trailers = dict(status.to_status(errors.InvalidArgument("jobs[0].queue", "is required")).trailing_metadata())
    assert "grpc-retry-pushback-ms" not in trailers


def test_per_job_and_per_stream_limits_are_configurable_and_name_the_field(tmp_path: Path) -> None:
    srv = ServerThread(str(tmp_path / "c.db"), max_headers=2, max_header_key_length=4, max_headers_bytes=32,
                       max_idempotency_key_length=8, max_queues_per_lease=2)
    srv.start()
    try:
        with grpc.insecure_channel(srv.target) as ch:
            stub = pb_grpc.QueueServiceStub(ch)
            cases = [
                (pb.JobSpec(queue="q", headers={"a": "1", "b": "2", "c": "3"}), "jobs[0].headers",
                 grpc.StatusCode.RESOURCE_EXHAUSTED),
                (pb.JobSpec(queue="q", headers={"long-key": "1"}), "jobs[0].headers", grpc.StatusCode.INVALID_ARGUMENT),
                (pb.JobSpec(queue="q", headers={"a": "x" * 40}), "jobs[0].headers", grpc.StatusCode.RESOURCE_EXHAUSTED),
                (pb.JobSpec(queue="q", idempotency_key="123456789"), "jobs[0].idempotency_key",
                 grpc.StatusCode.INVALID_ARGUMENT),
            ]
            for spec, field, code in cases:
                with pytest.raises(grpc.RpcError) as err:
                    stub.Enqueue(pb.EnqueueRequest(jobs=[spec]), timeout=5)
                assert err.value.code() == code and (err.value.details() or "").startswith(field)  # type: ignore[attr-defined]
            ok = stub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="q", idempotency_key="12345678",
                                                                 headers={"a": "1", "b": "2"})]), timeout=5)
            assert ok.results[0].job_id
            with pytest.raises(grpc.RpcError) as err:
                next(stub.Lease(pb.LeaseRequest(queues=["a", "b", "c"]), timeout=5))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            assert (err.value.details() or "").startswith("queues")  # type: ignore[attr-defined]
    finally:
        srv.close()
