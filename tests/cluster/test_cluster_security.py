"""Security across nodes of a real LiteFS cluster: node-to-node calls over mTLS, and a
forwarded caller's token checked again on the primary (the single-node rules are in
tests/server/test_tls.py and tests/server/test_tokens.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from support.certs import CA
from support.cluster_harness import Cluster
from support.tokens import md, tokens_toml

from edgeq import TLS, Client, UnavailableError, Worker
from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc
from edgeq_server import replication_pb2 as repl_pb


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA(tmp_path / "pki")


@pytest.mark.slow
def test_nodes_forward_proxy_and_report_over_mtls(tmp_path: Path, ca: CA) -> None:
    """A 2-node LiteFS cluster where every gRPC port requires client certificates: a
    replica forwards writes and proxies Lease to the primary presenting its own certificate,
    and its position reports reach the primary (replicated durability answers)."""
    node_cert = ca.issue("node")
    me = ca.issue("app")
    creds = grpc.ssl_channel_credentials(ca.pem, me.key_pem, me.cert_pem)
    args = ("--tls-cert", str(node_cert.cert), "--tls-key", str(node_cert.key), "--tls-client-ca", str(ca.cert),
            "--durability", "replicated")
    with Cluster(tmp_path, 2, *args, credentials=creds) as cluster:
        replica = cluster.replicas[0]
        tls = TLS(ca=ca.pem, cert=me.cert_pem, key=me.key_pem)
        with Client(replica.target, tls=tls, timeout=10) as client:
            deadline = time.monotonic() + 20
            while len(_primary_info(cluster, tls).replicas) < 1:
                assert time.monotonic() < deadline, "the replica never reported its position over TLS"
                time.sleep(0.1)
            result = client.enqueue("n", b"through the replica")
            assert result.txid > 0  # committed on the primary and confirmed by the replica
            done = threading.Event()
            with Worker(client, ["n"], lambda job: done.set()):
                assert done.wait(20), "no job through the proxied Lease stream"
        # A plaintext caller reaches no node.
        with Client(replica.target, timeout=2) as plain, pytest.raises(UnavailableError):
            plain.stats()


def _primary_info(cluster: object, tls: TLS) -> pb.GetNodeInfoResponse:
    primary = cluster.primary  # type: ignore[attr-defined]
    with Client(primary.target, tls=tls, timeout=5) as c:
        return c.stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=5)


@pytest.mark.slow
def test_forwarded_calls_are_checked_again_on_the_primary_and_a_forged_marker_gains_nothing(tmp_path: Path) -> None:
    """Two LiteFS nodes, each with its own tokens file ("{dir}"): the replica's file lets
    the token use every queue, the primary's only `a.*`. Through the replica an Enqueue to
    `b` is refused by the primary (it checks the forwarded caller's token again: a replica
    cannot widen it). A client that sets the forwarding marker itself is treated as a
    client (its edge Enqueue on the primary is accepted at the edge, not stored as a
    node's drain), and a client cannot call node-to-node RPCs."""
    wide, narrow = tmp_path / "wide.toml", tmp_path / "narrow.toml"
    wide.write_text(tokens_toml(("app", "tok-app", ["enqueue", "read"], None)))
    narrow.write_text(tokens_toml(("app", "tok-app", ["enqueue", "read"], ["a.*"])))
    cluster = Cluster(tmp_path, 2, "--tokens-file", "{dir}/tokens.toml", "--cluster-secret", "node-secret")
    for node, text in ((cluster.primary, narrow), (cluster.replicas[0], wide)):
        node.dir.mkdir(parents=True, exist_ok=True)
        (node.dir / "tokens.toml").write_text(text.read_text())
    with cluster:
        replica, primary = cluster.replicas[0], cluster.primary
        with grpc.insecure_channel(replica.target) as rch, grpc.insecure_channel(primary.target) as pch:
            rstub, pstub = pb_grpc.QueueServiceStub(rch), pb_grpc.QueueServiceStub(pch)
            ok = rstub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="a.1", payload=b"x")],
                                                 durability=pb.DURABILITY_LOCAL), metadata=md("tok-app"), timeout=10)
            assert ok.txid > 0
            with pytest.raises(grpc.RpcError) as err:
                rstub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="b", payload=b"x")],
                                                durability=pb.DURABILITY_LOCAL), metadata=md("tok-app"), timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
            # A forged marker (and a wrong node token) on the primary: still a client's call.
            forged = (*md("tok-app"), ("edgeq-forwarded-by", "10.0.0.9:50051"), ("edgeq-node-token", "guess"))
            resp = pstub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="a.2", payload=b"y")],
                                                   durability=pb.DURABILITY_EDGE), metadata=forged, timeout=10)
            assert resp.accepted_at_edge and resp.txid == 0
            # A forged marker on the replica is not refused as a second hop: it is forwarded.
            resp = rstub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="a.3", payload=b"z")],
                                                   durability=pb.DURABILITY_LOCAL), metadata=forged, timeout=10)
            assert resp.txid > 0
            # Node-to-node RPCs need the cluster secret.
            report = pch.stream_unary(
                "/edgeq.v1.ReplicationService/ReportPositions",
                request_serializer=repl_pb.ReportPositionsRequest.SerializeToString,
                response_deserializer=repl_pb.ReportPositionsResponse.FromString,
            )
            with pytest.raises(grpc.RpcError) as err:
                report(iter([repl_pb.ReportPositionsRequest(node="x", txid=1)]), metadata=md("tok-app"), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            # Replication still works: the replica's own reports carry the secret.
            deadline = time.monotonic() + 20
            while not pstub.GetNodeInfo(pb.GetNodeInfoRequest(), metadata=md("tok-app"), timeout=5).replicas:
                assert time.monotonic() < deadline, "the replica's position reports never arrived"
                time.sleep(0.1)
