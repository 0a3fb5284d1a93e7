"""Scoped tokens (issue 11): a TOML tokens file with named tokens (their SHA-256 only),
scopes and queue patterns, enforced on every RPC; reloaded on change, a removed token's
Lease streams end within a second; failed authentications rate-limited per address and
counted; on a real LiteFS cluster the primary checks a forwarded caller's token again and
a client that sets the forwarding marker itself gains nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from support.tokens import md, sha, tokens_toml

from edgeq._errors import error_from_rpc
from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc
from edgeq_server import metrics
from edgeq_server.app import EdgeqServer
from edgeq_server.auth import FAIL_LIMIT, parse_tokens_file
from edgeq_server.clock import ManualClock
from edgeq_server.config import Config

PRODUCER, WORKER, READER, ADMIN, EMAILS = "tok-producer", "tok-worker", "tok-reader", "tok-admin", "tok-emails"


ALL = (
    ("producer", PRODUCER, ["enqueue"], None),
    ("worker", WORKER, ["consume"], None),
    ("reader", READER, ["read"], None),
    ("admin", ADMIN, ["admin", "read", "enqueue", "consume"], None),
    ("emails", EMAILS, ["enqueue", "read", "consume", "admin"], ["emails.*"]),
)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EdgeqServer]:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(*ALL))
    cfg = Config(port=0, db_path=str(tmp_path / "t.db"), tokens_file=str(path))
    srv = EdgeqServer(cfg, clock=ManualClock())
    await srv.start()
    yield srv
    await srv.stop(drain_seconds=0, grace_seconds=0)


def _code(err: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> grpc.StatusCode:
    return err.value.code()


def _field(err: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> str:
    return error_from_rpc(err.value).field


async def test_each_scope_opens_its_rpcs_and_nothing_else(server: EdgeqServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb_grpc.QueueServiceStub(ch)
        put = pb.EnqueueRequest(jobs=[pb.JobSpec(queue="work", payload=b"x")])
        job_id = (await stub.Enqueue(put, metadata=md(PRODUCER))).results[0].job_id
        # The producer cannot read, consume or administer.
        for call, req in ((stub.GetJob, pb.GetJobRequest(job_id=job_id)),
                          (stub.CancelJob, pb.CancelJobRequest(job_id=job_id)),
                          (stub.Ack, pb.AckRequest(items=[pb.AckItem(lease_token="x")]))):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(req, metadata=md(PRODUCER))
            assert _code(err) == grpc.StatusCode.PERMISSION_DENIED
        # The reader reads, and cannot write.
        assert (await stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=md(READER))).job.id == job_id
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Enqueue(put, metadata=md(READER))
        assert _code(err) == grpc.StatusCode.PERMISSION_DENIED
        # The worker consumes.
        lease = stub.Lease(pb.LeaseRequest(queues=["work"], worker_id="w"), metadata=md(WORKER))
        got = await lease.read()
        assert got.jobs[0].job.id == job_id
        item = pb.AckItem(lease_token=got.jobs[0].lease_token)
        ack = await stub.Ack(pb.AckRequest(items=[item]), metadata=md(WORKER))
        assert list(ack.outcomes) == [pb.LEASE_OUTCOME_OK]
        lease.cancel()
        # The admin token administers; an unknown token is UNAUTHENTICATED, and says nothing of it.
        await stub.PauseQueue(pb.PauseQueueRequest(queue="work"), metadata=md(ADMIN))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetQueueStats(pb.GetQueueStatsRequest(), metadata=md("tok-nobody"))
        assert _code(err) == grpc.StatusCode.UNAUTHENTICATED and "tok-nobody" not in (err.value.details() or "")


async def test_queue_patterns_limit_every_rpc_that_names_a_queue(server: EdgeqServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb_grpc.QueueServiceStub(ch)
        mine = (await stub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="emails.welcome", payload=b"a")]),
                                   metadata=md(EMAILS))).results[0].job_id
        other = (await stub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="billing", payload=b"b")]),
                                    metadata=md(ADMIN))).results[0].job_id
        txid = server.writer.txid if server.writer else 0
        # A batch with one job outside the patterns is refused whole, naming that job.
        mixed = pb.EnqueueRequest(jobs=[pb.JobSpec(queue="emails.x", payload=b"1"), pb.JobSpec(queue="billing")])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Enqueue(mixed, metadata=md(EMAILS))
        assert _code(err) == grpc.StatusCode.PERMISSION_DENIED and _field(err) == "jobs[1].queue"
        assert (server.writer.txid if server.writer else 0) == txid  # nothing stored
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Lease(pb.LeaseRequest(queues=["emails.a", "billing"]), metadata=md(EMAILS)).read()
        assert _code(err) == grpc.StatusCode.PERMISSION_DENIED and _field(err) == "queues[1]"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListJobs(pb.ListJobsRequest(), metadata=md(EMAILS))
        assert _code(err) == grpc.StatusCode.PERMISSION_DENIED and _field(err) == "queue"
        listed = await stub.ListJobs(pb.ListJobsRequest(queue="emails.welcome"), metadata=md(EMAILS))
        assert [j.id for j in listed.jobs] == [mine]
        # Jobs of other queues do not exist for this token.
        for call, req in ((stub.GetJob, pb.GetJobRequest(job_id=other)),
                          (stub.CancelJob, pb.CancelJobRequest(job_id=other))):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(req, metadata=md(EMAILS))
            assert _code(err) == grpc.StatusCode.NOT_FOUND
        assert (await stub.GetJob(pb.GetJobRequest(job_id=other), metadata=md(ADMIN))).job.state == pb.JOB_STATE_PENDING
        # Stats without a filter show only its queues.
        stats = await stub.GetQueueStats(pb.GetQueueStatsRequest(), metadata=md(EMAILS))
        assert [s.queue for s in stats.stats] == ["emails.welcome"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PauseQueue(pb.PauseQueueRequest(queue="billing"), metadata=md(EMAILS))
        assert _field(err) == "queue"
        # Bulk calls name their queue in the selection: refused outside the patterns, nothing changed.
        for bulk in (stub.CancelJobs(pb.CancelJobsRequest(selection=pb.JobSelection(queue="billing")),
                                     metadata=md(EMAILS)),
                     stub.RetryJobs(pb.RetryJobsRequest(selection=pb.JobSelection(queue="billing")),
                                    metadata=md(EMAILS))):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await bulk
            assert _code(err) == grpc.StatusCode.PERMISSION_DENIED and _field(err) == "selection.queue"
        assert (await stub.GetJob(pb.GetJobRequest(job_id=other), metadata=md(ADMIN))).job.state == pb.JOB_STATE_PENDING
        mine_bulk = pb.CancelJobsRequest(selection=pb.JobSelection(queue="emails.welcome"))
        assert (await stub.CancelJobs(mine_bulk, metadata=md(EMAILS))).count == 1
        # Schedules: upserted only into its queues; by-name calls need an unrestricted token.
        sch = pb.Schedule(name="mail-digest", queue="billing", cron="0 * * * *")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.UpsertSchedule(pb.UpsertScheduleRequest(schedule=sch), metadata=md(EMAILS))
        assert _code(err) == grpc.StatusCode.PERMISSION_DENIED and _field(err) == "schedule.queue"
        sch.queue = "emails.digest"
        await stub.UpsertSchedule(pb.UpsertScheduleRequest(schedule=sch), metadata=md(EMAILS))
        for by_name in (stub.DeleteSchedule(pb.DeleteScheduleRequest(name="mail-digest"), metadata=md(EMAILS)),
                        stub.ListSchedules(pb.ListSchedulesRequest(), metadata=md(EMAILS))):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await by_name
            assert _code(err) == grpc.StatusCode.PERMISSION_DENIED
        assert (await stub.DeleteSchedule(pb.DeleteScheduleRequest(name="mail-digest"), metadata=md(ADMIN))).deleted
        # A token without the admin scope cannot bulk-act at all.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RetryJobs(pb.RetryJobsRequest(selection=pb.JobSelection(queue="billing")), metadata=md(READER))
        assert _code(err) == grpc.StatusCode.PERMISSION_DENIED


async def test_a_removed_token_is_revoked_and_its_lease_streams_end_within_a_second(
    server: EdgeqServer, tmp_path: Path
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb_grpc.QueueServiceStub(ch)
        lease = stub.Lease(pb.LeaseRequest(queues=["r"], worker_id="w"), metadata=md(WORKER))
        await lease.initial_metadata()
        # Remove the worker's entry (rewrite the file, as an operator would).
        (tmp_path / "tokens.toml").write_text(tokens_toml(*(e for e in ALL if e[1] != WORKER)))
        removed = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await lease.read()
        ended = time.monotonic() - removed
        assert _code(err) == grpc.StatusCode.UNAUTHENTICATED and "revoked" in (err.value.details() or "")
        assert ended < 1.5, f"the revoked token's stream lasted {ended:.2f}s"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Heartbeat(pb.HeartbeatRequest(lease_tokens=["x"]), metadata=md(WORKER))
        assert _code(err) == grpc.StatusCode.UNAUTHENTICATED
        # The other tokens are untouched; a file that does not parse keeps the current tokens.
        (tmp_path / "tokens.toml").write_text("[[token]]\nname = 1\n")
        await asyncio.sleep(0.7)
        assert (await stub.GetQueueStats(pb.GetQueueStatsRequest(), metadata=md(READER))) is not None


async def test_failed_authentications_are_rate_limited_per_address_and_counted(server: EdgeqServer) -> None:
    before = metrics.AUTH_FAILURES.labels("unknown")._value.get()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb_grpc.QueueServiceStub(ch)
        for _ in range(FAIL_LIMIT):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetQueueStats(pb.GetQueueStatsRequest(), metadata=md("guess"))
            assert _code(err) == grpc.StatusCode.UNAUTHENTICATED
        # From now on this address is refused unheard, even with a good token, with a retry delay.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetQueueStats(pb.GetQueueStatsRequest(), metadata=md(READER))
        assert _code(err) == grpc.StatusCode.UNAUTHENTICATED
        refused = error_from_rpc(err.value)
        assert refused.reason == "AUTH_RATE_LIMITED" and refused.retry_delay and refused.retry_delay > 0
    assert metrics.AUTH_FAILURES.labels("unknown")._value.get() - before == FAIL_LIMIT


def test_the_tokens_file_is_checked_naming_the_entry_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    cases = {
        '[[token]]\nname = "a"\nsha256 = "secret-token"\nscopes = ["read"]\n': r"token\[0\]\.sha256",
        f'[[token]]\nname = "a"\nsha256 = "{sha("x")}"\nscopes = ["write"]\n': r"token\[0\]\.scopes",
        f'[[token]]\nname = "a"\nsha256 = "{sha("x")}"\nscopes = []\n': r"token\[0\]\.scopes",
        f'[[token]]\nname = "a"\nsha256 = "{sha("x")}"\nscopes = ["read"]\nqueues = []\n': r"token\[0\]\.queues",
        f'[[token]]\nname = "a"\nsha256 = "{sha("x")}"\nscopes = ["read"]\n'
        f'[[token]]\nname = "a"\nsha256 = "{sha("y")}"\nscopes = ["read"]\n': r"token\[1\]\.name",
        f'[[token]]\nname = "a"\nsha256 = "{sha("x")}"\nscopes = ["read"]\nrole = "x"\n': r"unknown field",
        "not toml [": "not valid TOML",
    }
    for text, match in cases.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=match):
            parse_tokens_file(str(path))
    with pytest.raises(ValueError, match="tokens_file: cannot read"):
        parse_tokens_file(str(tmp_path / "missing.toml"))
    path.write_text(tokens_toml(*ALL))
    parsed = parse_tokens_file(str(path))
    assert sha(EMAILS) in parsed and parsed[sha(EMAILS)].queues == ("emails.*",)
    assert PRODUCER not in path.read_text()  # only digests are stored


def test_the_cli_hashes_a_token_and_serve_refuses_a_bad_tokens_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "edgeq_server", "hash-token"], input="tok-abc\n",
                         capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == sha("tok-abc")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[token]]\nname = "a"\nsha256 = "tok-abc"\nscopes = ["read"]\n')
    out = subprocess.run(
        [sys.executable, "-m", "edgeq_server", "serve", "--port", "0", "--db-path", str(tmp_path / "x.db"),
         "--tokens-file", str(bad)], capture_output=True, text=True, timeout=30, check=False,
    )
    assert out.returncode != 0 and "token[0].sha256" in out.stderr and "Traceback" not in out.stderr


async def test_tokens_never_reach_logs_or_error_messages(
    server: EdgeqServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    secret = "tok-secret-never-logged"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb_grpc.QueueServiceStub(ch)
        messages = []
        for token in (secret, PRODUCER):
            try:
                await stub.ListJobs(pb.ListJobsRequest(queue="x"), metadata=md(token))
            except grpc.aio.AioRpcError as exc:
                messages.append(exc.details() or "")
        # A reload that revokes a token names the entry, never the token.
        (tmp_path / "tokens.toml").write_text(tokens_toml(*(e for e in ALL if e[1] != READER)))
        await asyncio.sleep(0.8)
    assert "revoked or changed: reader" in caplog.text
    for token in (secret, PRODUCER, READER):
        assert token not in caplog.text and all(token not in m for m in messages)


def test_the_tokens_file_reads_tokens_tables_and_common_field_spellings(tmp_path: Path) -> None:
    path = tmp_path / "alt.toml"
    path.write_text(f'[[tokens]]\nname = "a"\nhash = "sha256:{sha("x").upper()}"\nscopes = ["read"]\n'
                    'queue_patterns = ["q.*"]\n')
    parsed = parse_tokens_file(str(path))
    assert parsed[sha("x")].name == "a" and parsed[sha("x")].queues == ("q.*",)
