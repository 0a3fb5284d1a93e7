"""replication.py on its own: parsing LiteFS's files and the bounded position wait (the
real LiteFS behaviour is covered by tests/test_cluster.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeq_server.replication import LiteFSNode, Position, read_txid


def test_read_txid_parses_the_pos_file_and_treats_absence_as_zero(tmp_path: Path) -> None:
    pos = tmp_path / "edgeq.db-pos"
    assert read_txid(pos) == 0
    pos.write_text("00000000000000ff/e7e51312420eb41d")
    assert read_txid(pos) == 255
    pos.write_text("garbage")
    with pytest.raises(ValueError, match="unexpected LiteFS position"):
        read_txid(pos)


def test_litefs_node_is_primary_exactly_when_no_primary_file_exists(tmp_path: Path) -> None:
    node = LiteFSNode(str(tmp_path), "edgeq.db")
    assert node.db_path == str(tmp_path / "edgeq.db")
    assert node.is_primary() and node.primary_address() is None
    (tmp_path / ".primary").write_text("10.0.0.1:50051\n")
    assert node.read_primary() == "10.0.0.1:50051"
    assert node.is_primary()  # the cached role changes only when watch() refreshes it
    fresh = LiteFSNode(str(tmp_path), "edgeq.db")
    assert not fresh.is_primary() and fresh.primary_address() == "10.0.0.1:50051"


async def test_position_wait_returns_as_soon_as_reached_and_gives_up_after_the_bound() -> None:
    value = [5]
    position = Position(lambda: value[0])
    assert await position.wait_for(5, 0)
    assert not await position.wait_for(6, 0.02)
    value[0] = 6
    assert await position.wait_for(6, 0.02)
