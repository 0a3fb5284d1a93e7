"""The WAL stays bounded under continuous writes: the checkpointer is asked once per
CHECKPOINT_PAGES of growth (not on every commit), and past WAL_RESTART_PAGES the writer
runs a RESTART checkpoint itself so the next transaction starts the WAL over, even when a
reader keeps PASSIVE checkpoints from ever catching up."""

from __future__ import annotations

import os
from pathlib import Path

import apsw
import pytest

from edgeq_server import db
from edgeq_server.clock import ManualClock
from edgeq_server.writer import Writer


def test_checkpoints_are_requested_per_growth_step_not_per_commit() -> None:
    cp = db.Checkpointer(":memory:")
    wakes = 0
    for pages in range(1, 5 * db.CHECKPOINT_PAGES, 7):  # one commit of 7 pages after another
        cp.wal_hook(None, "main", pages)  # type: ignore[arg-type]
        if cp._wake.is_set():
            wakes += 1
            cp._wake.clear()
    assert wakes == 4
    cp.wal_hook(None, "main", 3)  # type: ignore[arg-type]  # the WAL started over
    cp.wal_hook(None, "main", db.CHECKPOINT_PAGES)  # type: ignore[arg-type]
    assert cp._wake.is_set()


async def test_the_writer_restarts_a_wal_that_passive_checkpoints_cannot_shrink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpointer thread is never started here, standing for PASSIVE checkpoints that
    never catch up: only the writer's own RESTART checkpoint can bound the WAL."""
    monkeypatch.setattr(db, "CHECKPOINT_PAGES", 20)
    monkeypatch.setattr(db, "WAL_RESTART_PAGES", 200)
    path = str(tmp_path / "w.db")
    checkpointer = db.Checkpointer(path)
    writer = Writer(path, ManualClock(), checkpointer=checkpointer)
    writer.start()
    largest = 0
    try:
        for i in range(1500):
            blob = os.urandom(3000)  # about a page per write
            await writer.submit(lambda s, now, b=blob, i=i: s.conn.execute(
                "INSERT INTO queues (name, paused, updated_at) VALUES (?, 0, ?)", (f"q{i}-{b.hex()[:8]}", len(b))
            ))
            largest = max(largest, os.path.getsize(path + "-wal"))  # noqa: ASYNC240 - a test probe
    finally:
        writer.close()
    assert largest < 250 * (4096 + 24), f"WAL grew to {largest} bytes"
    conn = apsw.Connection(path)
    assert conn.execute("SELECT count(*) FROM queues").get == 1500
    conn.close()
