"""Everything cluster-specific, behind one interface: ``Cluster`` (see ``base.py``).

``build(cfg, ...)`` picks the implementation: ``Standalone`` for a plain SQLite file,
``LiteFSCluster`` (``node.py``) when ``--litefs-mount`` is set. The core imports nothing
else from this package.

    base.py        Cluster, Role, Position, Standalone
    litefs.py      LiteFSNode: what LiteFS says (role state machine, position, checksums)
    forward.py     Forwarder: writes and Lease streams to the primary
    durability.py  replicated durability: position reports, verified positions, waits
    edgelog.py     EdgeLog: Enqueues accepted at this node (durability edge, the partition
                   outbox), drained to the primary exactly once
    watchdog.py    LiteFSWatchdog: closes LiteFS connections to peers that went silent
    node.py        LiteFSCluster: the composition and the routing of RPCs
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..auth import Tokens
from ..clock import Clock
from ..config import Config
from ..tls import ServerTLS
from .base import Cluster, Position, Role, Standalone

__all__ = ["Cluster", "Position", "Role", "Standalone", "build"]


def build(
    cfg: Config, clock: Clock, committed: Callable[[], int], channel_options: list[tuple[str, Any]],
    tls: ServerTLS | None = None, tokens: Tokens | None = None,
) -> Cluster:
    """The cluster implementation ``cfg`` asks for; ``committed()`` is the writer's last txid;
    ``tls``: the server's TLS (calls to other nodes use it too); ``tokens``: with auth on,
    a forwarded call counts as one only with the cluster secret."""
    if not cfg.litefs_mount:
        import os

        return Standalone(os.path.abspath(cfg.db_path), committed)
    from .node import LiteFSCluster

    return LiteFSCluster(cfg, clock, channel_options, tls, tokens)
