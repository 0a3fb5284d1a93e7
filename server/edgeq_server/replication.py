"""Everything LiteFS-specific: where this node stands in the cluster.

LiteFS (https://fly.io/docs/litefs/) replicates the SQLite file from one primary to
replicas. This module reads what LiteFS exposes in its FUSE mount:

- ``<mount>/.primary``: present only on a replica connected to a primary; holds the
  primary's ``lease.hostname`` (each node sets it to its own gRPC address). Absent on the
  primary.
- ``<mount>/<db>-pos``: ``<16 hex TXID>/<16 hex checksum>``, this node's replication
  position. On the primary it moves with every commit, so the TXID after a commit is the
  consistency token (``txid``) edgeq returns; a replica has applied a write once its TXID
  reaches that value.

Without LiteFS (``Position.local``) the position is the writer's own commit counter.
Forwarding writes to the primary builds on ``LiteFSNode.primary_address`` (issue 3).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

POLL_SECONDS = 0.005


def read_txid(pos_file: Path) -> int:
    """The TXID in a ``-pos`` file; 0 if it does not exist yet or is empty."""
    try:
        text = pos_file.read_text().strip()
    except FileNotFoundError:
        return 0
    if not text:
        return 0
    try:
        return int(text.split("/", 1)[0], 16)
    except ValueError:
        raise ValueError(f"unexpected LiteFS position {text!r} in {pos_file}") from None


class LiteFSNode:
    """One node's view of its LiteFS mount."""

    def __init__(self, mount: str, db_name: str) -> None:
        self.mount = Path(mount)
        self.db_path = str(self.mount / db_name)
        self._pos = Path(self.db_path + "-pos")
        self._primary = self.mount / ".primary"

    def txid(self) -> int:
        """This node's replication position (LiteFS TXID of the database)."""
        return read_txid(self._pos)

    def primary_address(self) -> str | None:
        """The primary's gRPC address, or None when this node is the primary."""
        try:
            return self._primary.read_text().strip() or None
        except FileNotFoundError:
            return None

    def is_primary(self) -> bool:
        return not os.path.exists(self._primary)


class Position:
    """This node's data position, and a bounded wait for it (read-your-writes)."""

    def __init__(self, current: Callable[[], int]) -> None:
        self.current = current

    async def wait_for(self, txid: int, seconds: float) -> bool:
        """True once ``current() >= txid``; False if ``seconds`` pass first."""
        if self.current() >= txid:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            if self.current() >= txid:
                return True
        return False
