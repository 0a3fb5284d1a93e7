"""Every RPC of QueueService is in the tables that decide how it is treated: the scope it
needs (auth.METHOD_SCOPE), and whether a replica forwards it to the primary
(cluster.node.WRITE_METHODS; reads are served where they arrive). A new RPC missing from
either would be refused by auth or applied on a replica's read-only database."""

from __future__ import annotations

from edgeq.v1 import queue_pb2 as pb
from edgeq_server.auth import METHOD_SCOPE
from edgeq_server.cluster.node import WRITE_METHODS

RPCS = {m.name for m in pb.DESCRIPTOR.services_by_name["QueueService"].methods}
READS = {"GetJob", "ListJobs", "GetQueueStats", "GetNodeInfo", "ListSchedules", "ListGroups"}


def test_every_rpc_has_a_scope() -> None:
    assert set(METHOD_SCOPE) == RPCS
    assert {m for m, scope in METHOD_SCOPE.items() if scope == "read"} == READS


def test_every_write_is_forwarded_by_a_replica() -> None:
    # Lease is a stream (proxied to the primary by its own path); the rest write or read.
    assert WRITE_METHODS == RPCS - READS - {"Lease"}
