"""The cluster package's parts on their own: parsing LiteFS's files and events, the role
state machine, the bounded position wait, verified replica positions and their waiters,
the cluster options, and GetNodeInfo on a standalone node (the real LiteFS behaviour is
covered by tests/test_cluster.py, test_cluster_ha.py and the fault suite, test_chaos.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc
from edgeq_server.app import EdgeqServer
from edgeq_server.clock import ManualClock
from edgeq_server.cluster import Position, Role
from edgeq_server.cluster.durability import ReplicaPositions, ReplicationServicer
from edgeq_server.cluster.litefs import LiteFSNode, read_txid
from edgeq_server.config import Config


def test_read_txid_parses_the_pos_file_and_treats_absence_as_zero(tmp_path: Path) -> None:
    pos = tmp_path / "edgeq.db-pos"
    assert read_txid(pos) == 0
    pos.write_text("00000000000000ff/e7e51312420eb41d")
    assert read_txid(pos) == 255
    pos.write_text("garbage")
    with pytest.raises(ValueError, match="unexpected LiteFS position"):
        read_txid(pos)


def test_a_node_is_never_primary_without_litefs_saying_so(tmp_path: Path) -> None:
    """Fault 4: an absent .primary used to mean "I am primary" whenever /events was down
    (every reconnect): a replica without a primary called itself primary. Now only an
    isPrimary event makes a node primary; .primary can only say "replica of"."""
    node = LiteFSNode(str(tmp_path), "edgeq.db", "127.0.0.1:1")  # nothing listens: /events is down
    assert node.role() is Role.UNKNOWN and not node.is_primary() and node.primary_address() is None
    (tmp_path / ".primary").write_text("10.0.0.1:50051\n")
    assert node.read_primary() == "10.0.0.1:50051"
    node._event({"type": "init", "data": {"isPrimary": True}})
    assert node.is_primary()
    node._event({"type": "primaryChange", "data": {"isPrimary": False, "hostname": "10.0.0.1:50051"}})
    assert node.role() is Role.REPLICA and node.primary_address() == "10.0.0.1:50051"


async def test_the_events_follower_says_unknown_not_primary_while_litefs_is_unreachable(tmp_path: Path) -> None:
    node = LiteFSNode(str(tmp_path), "edgeq.db", "127.0.0.1:1")
    roles: list[Role] = []
    node.on_role_change(roles.append)
    node.start()
    try:
        assert not await asyncio.to_thread(node.wait_ready, 1.2)  # several reconnect attempts
        assert node.role() is Role.UNKNOWN and roles == []
        (tmp_path / ".primary").write_text("10.0.0.9:50051\n")  # LiteFS's word: a replica of 10.0.0.9
        for _ in range(100):
            if node.role() is Role.REPLICA:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0)
        assert node.primary_address() == "10.0.0.9:50051" and roles == [Role.REPLICA]
        (tmp_path / ".primary").unlink()  # absent proves nothing: stays a replica, never primary
        await asyncio.sleep(1.2)
        assert not node.is_primary()
    finally:
        node.stop()


async def test_position_wait_returns_as_soon_as_reached_and_gives_up_after_the_bound() -> None:
    value = [5]
    position = Position(lambda: value[0])
    assert await position.wait_for(5, 0)
    assert not await position.wait_for(6, 0.02)
    value[0] = 6
    assert await position.wait_for(6, 0.02)


def test_litefs_events_set_the_role_and_wake_position_listeners(tmp_path: Path) -> None:
    node = LiteFSNode(str(tmp_path), "edgeq.db", "")
    woken: list[int] = []
    node.on_position(lambda txid, _checksum: woken.append(txid))
    node._event({"type": "init", "data": {"isPrimary": False, "hostname": "10.0.0.2:50051"}})
    assert not node.is_primary() and node.primary_address() == "10.0.0.2:50051"
    # Disconnected from the primary: still a replica, with nowhere to forward to.
    node._event({"type": "primaryChange", "data": {"isPrimary": False}})
    assert not node.is_primary() and node.primary_address() is None
    node._event({"type": "primaryChange", "data": {"isPrimary": True}})
    assert node.is_primary() and node.primary_address() is None
    node._event({"type": "tx", "db": "other.db", "data": {"txID": "0000000000000002"}})
    assert woken == []
    node._event({"type": "tx", "db": "edgeq.db", "data": {"txID": "0000000000000003"}})
    assert woken == [3]


async def test_replica_positions_wait_for_the_required_number_of_replicas() -> None:
    positions = ReplicaPositions(required=2, now=lambda: 7)
    waiting = asyncio.create_task(positions.wait(10, 5))
    await asyncio.sleep(0)
    positions.report("a:1", 12)
    await asyncio.sleep(0)
    assert not waiting.done()  # one replica is not enough
    positions.report("b:1", 10)
    assert await waiting
    assert positions.snapshot() == [("a:1", 12, 7, True), ("b:1", 10, 7, True)]
    assert await positions.wait(10, 0)  # already durable
    positions.forget("b:1")  # a disconnected replica no longer counts
    assert not await positions.wait(10, 0.02)
    positions.report("b:1", 11)  # the timed-out waiter left nothing behind that breaks later ones
    assert await positions.wait(11, 0.02)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"durability": "sometimes"}, "durability must be"),
        ({"durability": "replicated"}, "need LiteFS mode"),
        ({"outbox_path": "/tmp/o.db"}, "need LiteFS mode"),
        ({"litefs_mount": "/litefs", "durability_replicas": 0}, "durability_replicas"),
        ({"litefs_mount": "/litefs", "client_token": "c"}, "cluster_secret"),
        ({"litefs_mount": "/litefs", "tokens_file": "t.toml"}, "cluster_secret"),
        ({"litefs_mount": "/litefs", "outbox_forward_timeout_seconds": 0}, "outbox_forward_timeout"),
    ],
)
def test_cluster_options_are_validated(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Config(**overrides)  # type: ignore[arg-type]


async def test_a_standalone_node_describes_itself(tmp_path: Path) -> None:
    srv = EdgeqServer(Config(port=0, db_path=str(tmp_path / "n.db")), clock=ManualClock())
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = pb_grpc.QueueServiceStub(ch)
            before = await stub.GetNodeInfo(pb.GetNodeInfoRequest())
            job = pb.JobSpec(queue="q", payload=b"x", idempotency_key="k")
            resp = await stub.Enqueue(pb.EnqueueRequest(jobs=[job]))
            after = await stub.GetNodeInfo(pb.GetNodeInfoRequest())
    finally:
        await srv.stop(drain_seconds=0, grace_seconds=0)
    assert before.role == after.role == pb.NODE_ROLE_STANDALONE
    assert after.txid == resp.txid > before.txid
    assert after.durability == "local" and after.primary == "" and not after.replicas
    assert resp.results[0].idempotency_key == "k" and not resp.buffered


def test_litefs_node_txid_follows_the_pos_file_through_one_open_descriptor(tmp_path: Path) -> None:
    node = LiteFSNode(str(tmp_path), "edgeq.db", "")
    assert node.txid() == 0  # no -pos yet
    pos = tmp_path / "edgeq.db-pos"
    pos.write_text("0000000000000010/e7e51312420eb41d\n")
    assert node.txid() == 16
    with pos.open("r+") as f:  # rewritten in place, as LiteFS presents it
        f.write("0000000000000011/e7e51312420eb41d\n")
    assert node.txid() == 17
    node.stop()


async def test_the_python_client_reads_node_info(tmp_path: Path) -> None:
    from edgeq import Client

    srv = EdgeqServer(Config(port=0, db_path=str(tmp_path / "n.db")), clock=ManualClock())
    await srv.start()
    try:
        def read() -> tuple[str, int, str]:
            with Client(f"127.0.0.1:{srv.port}") as client:
                txid = client.enqueue("q", b"x").txid
                info = client.node_info()
                return info.role, info.txid - txid, info.durability

        assert await asyncio.to_thread(read) == ("standalone", 0, "local")
    finally:
        await srv.stop(drain_seconds=0, grace_seconds=0)


async def test_a_position_counts_only_if_its_checksum_matches_the_primarys(tmp_path: Path) -> None:
    """Fault 5: a replica that restored or diverged can report the primary's TXID number
    from another lineage (or one ahead of it). Only a matching checksum counts."""
    from edgeq_server import replication_pb2 as repl_pb

    (tmp_path / "edgeq.db-pos").write_text("000000000000000a/e7e51312420eb41d\n")  # the primary: 10/e7e5...
    node = LiteFSNode(str(tmp_path), "edgeq.db", "")
    positions = ReplicaPositions(required=1, now=lambda: 0)
    servicer = ReplicationServicer(node, positions)
    node._event({"type": "init", "data": {"isPrimary": True}})
    seen: list[list[tuple[str, int, int, bool]]] = []

    async def reports():  # type: ignore[no-untyped-def]
        for txid, checksum in ((50, "00000000000000aa"), (10, "ffffffffffffffff"), (10, "e7e51312420eb41d"),
                               (11, "0000000000000001"), (9, "")):
            yield repl_pb.ReportPositionsRequest(node="r:1", txid=txid, checksum=checksum)
            await asyncio.sleep(0)
            seen.append(positions.snapshot())

    await servicer.ReportPositions(reports(), context=None)
    assert [s[0][1:] for s in seen] == [
        (50, 0, False),  # ahead of the primary: another lineage
        (10, 0, False),  # the same number, another checksum
        (10, 0, True),   # the primary's own transaction 10
        (10, 0, True),   # 11 is not the primary's (yet): the verified 10 still holds, nothing more
        (9, 0, False),   # went back (LiteFS re-snapshotted it), no checksum: not verified
    ]
    assert positions.snapshot() == []  # forgotten when the stream ends
    node.stop()


async def test_replica_position_waiters_leave_on_every_exit_path() -> None:
    """Fault 7: timed-out and cancelled waits stayed in the heap forever."""
    positions = ReplicaPositions(required=1, now=lambda: 0)
    timed_out = [asyncio.create_task(positions.wait(100 + i, 0.01)) for i in range(1000)]
    cancelled = [asyncio.create_task(positions.wait(5000 + i, 10)) for i in range(1000)]
    reached = [asyncio.create_task(positions.wait(i, 10)) for i in range(1, 11)]
    await asyncio.sleep(0)
    assert positions.waiting == 2010
    assert not any(await asyncio.gather(*timed_out))
    for task in cancelled:
        task.cancel()
    await asyncio.gather(*cancelled, return_exceptions=True)
    positions.report("r:1", 10)
    assert all(await asyncio.gather(*reached))
    assert positions.waiting == 0
    assert len(positions._heap) <= 64  # entries of abandoned waits were dropped in bulk, not kept


async def test_replicated_durability_waits_for_every_live_replica_and_skips_silent_ones() -> None:
    """With a Consul lease any candidate may become primary: the fault suite lost a write
    one replica confirmed when the other won the election. Replicated durability waits for
    every replica that reported within LIVE_SECONDS (at least ``required``)."""
    now = [0]
    positions = ReplicaPositions(required=1, now=lambda: now[0])
    positions.report("a:1", 5)
    positions.report("b:1", 3)
    waiting = asyncio.create_task(positions.wait(5, 5))
    await asyncio.sleep(0)
    assert not waiting.done()  # b is live and behind
    positions.report("b:1", 5)
    assert await waiting
    now[0] += 2_000_000  # both went silent: a fresh report from one is enough
    waiting = asyncio.create_task(positions.wait(6, 5))
    await asyncio.sleep(0)
    positions.report("a:1", 6)
    assert await waiting
    positions.forget("a:1")
    positions.forget("b:1")
    assert not await positions.wait(7, 0.01)  # nobody live: at least ``required`` still holds


async def test_a_buffered_enqueue_whose_caller_goes_away_mid_append_is_stored_and_counted(tmp_path: Path) -> None:
    """Fault 6: a caller cancelled during the append stranded a row the counter did not
    know about. Now the append and the count are one shielded step: the row exists (and
    will drain) and the counters agree with the file."""
    from edgeq_server.cluster.edgelog import EdgeLog
    from edgeq_server.cluster.forward import Forwarder

    cfg = Config(litefs_mount=str(tmp_path), outbox_path=str(tmp_path / "outbox" / "o.db"))
    node = LiteFSNode(str(tmp_path), "edgeq.db", "127.0.0.1:1")  # role unknown: no primary, so it buffers
    buffer = EdgeLog(cfg, ManualClock(), node, Forwarder(node, "me:1", []), (), str(tmp_path / "edgeq.db"))
    await buffer.open()
    try:
        request = pb.EnqueueRequest(jobs=[pb.JobSpec(queue="q", payload=b"x")])
        calls = [asyncio.create_task(buffer.accept(request)) for _ in range(20)]
        await asyncio.sleep(0)
        for call in calls[::2]:
            call.cancel()  # half the callers go away mid-append
        done = await asyncio.gather(*calls, return_exceptions=True)
        answered = [d for d in done if isinstance(d, pb.EnqueueResponse)]
        assert len(answered) >= 10 and all(a.buffered for a in answered)
        for _ in range(100):  # the shielded appends of the cancelled callers finish on their own
            if buffer.pending == 20:
                break
            await asyncio.sleep(0.01)
        stored = buffer.store.totals()
        assert buffer.pending == stored[0] == 20 and buffer.jobs == stored[1] == 20 and buffer.dead == 0
        assert buffer.bytes == stored[2] > 0
    finally:
        await buffer.close()
        node.stop()


def test_metric_labels_per_queue_are_capped() -> None:
    from edgeq_server import metrics

    names = [f"label-cap-{i}" for i in range(metrics.MAX_QUEUE_LABELS + 50)]
    labels = {metrics.queue_label(n) for n in names}
    assert len(labels) <= metrics.MAX_QUEUE_LABELS + 1 and "_other" in labels


def test_the_watchdog_sees_one_process_connections_by_socket_inode() -> None:
    """The watchdog lists LiteFS's connections with `ss -tnie` and tells them apart by the
    inodes in /proc/<pid>/fd (no `ss -p` walk of every process)."""
    import os
    import shutil
    import socket
    import subprocess
    import time

    from edgeq_server.cluster.watchdog import parse_ss, socket_inodes

    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) missing")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client, server.accept()[0]:
            client.sendall(b"x")
            time.sleep(0.05)  # ss omits lastrcv while it is 0 ms (kernel jiffies)
            out = subprocess.run(
                ["ss", "-H", "-tnie", "state", "established"], capture_output=True, text=True, check=True
            ).stdout
            inodes = socket_inodes(os.getpid())
            assert inodes is not None
            mine = parse_ss(out, "established", inodes)
            peers = {c.peer for c in mine}
            assert f"127.0.0.1:{port}" in peers  # the dialed side
            assert all(c.info.get("lastrcv") is not None for c in mine)
            assert parse_ss(out, "established", set()) == []
    assert socket_inodes(2**22 + 12345) is None


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root): a disk that fills up."""
    import os
    import subprocess

    disk = tmp_path / "small"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI runs as root and must run this test)")
        pytest.skip(message)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


async def test_a_full_disk_under_the_edge_log_answers_edge_log_full_and_stores_nothing_more(
    tmp_path: Path, small_disk: Path
) -> None:
    """Disk full is the same answer as the cap: RESOURCE_EXHAUSTED (EDGE_LOG_FULL) with a
    retry delay; what was accepted before stays, nothing half-written is counted."""
    from edgeq_server import status
    from edgeq_server.cluster.edgelog import EdgeLog
    from edgeq_server.cluster.forward import Forwarder
    from edgeq_server.errors import ResourceExhausted

    cfg = Config(litefs_mount=str(tmp_path / "mnt"), edge_log_path=str(small_disk / "edge.db"))
    node = LiteFSNode(str(tmp_path / "mnt"), "edgeq.db", "127.0.0.1:1")  # no primary: nothing drains
    log = EdgeLog(cfg, ManualClock(), node, Forwarder(node, "me:1", []), (), str(tmp_path / "edgeq.db"))
    await log.open()
    try:
        accepted = 0
        with pytest.raises(ResourceExhausted) as err:
            for _ in range(10_000):
                await log.accept(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="q", payload=b"x" * 2000)]))
                accepted += 1
        st = status.to_status(err.value)
        assert st.code.name == "RESOURCE_EXHAUSTED" and err.value.reason == "EDGE_LOG_FULL"
        assert err.value.retry_after and "full" in str(err.value)
        assert accepted > 0
        assert log.jobs == accepted == log.store.totals()[1]
    finally:
        await log.close()
        node.stop()
