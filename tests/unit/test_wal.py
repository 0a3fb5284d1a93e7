"""The WAL stays bounded under continuous writes: the checkpointer is asked once per
CHECKPOINT_PAGES of growth (not on every commit); past WAL_RESTART_PAGES the writer
finishes the checkpointer's nearly complete backfill itself (a short pause) so the WAL
starts over, and past WAL_FORCE_RESTART_PAGES it runs a blocking RESTART checkpoint, even
when PASSIVE checkpoints never catch up."""

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
    monkeypatch.setattr(db, "WAL_RESTART_PAGES", 100)
    monkeypatch.setattr(db, "WAL_FORCE_RESTART_PAGES", 200)
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


async def test_the_writer_finishes_a_nearly_done_backfill_so_the_wal_starts_over_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the checkpointer running, the WAL starts over soon after WAL_RESTART_PAGES,
    long before the forced (blocking) RESTART, and without one."""
    monkeypatch.setattr(db, "CHECKPOINT_PAGES", 20)
    monkeypatch.setattr(db, "RESTART_CATCH_UP_PAGES", 100)
    monkeypatch.setattr(db, "WAL_RESTART_PAGES", 100)
    monkeypatch.setattr(db, "WAL_FORCE_RESTART_PAGES", 10_000)
    path = str(tmp_path / "c.db")
    checkpointer = db.Checkpointer(path, interval_s=0.01)
    writer = Writer(path, ManualClock(), checkpointer=checkpointer)
    forced: list[int] = []
    monkeypatch.setattr(writer, "_restart_wal", lambda conn, cp: forced.append(cp.wal_pages))
    writer.start()
    checkpointer.start()
    largest = 0
    try:
        for i in range(1500):
            blob = os.urandom(3000)
            await writer.submit(lambda s, now, b=blob, i=i: s.conn.execute(
                "INSERT INTO queues (name, paused, updated_at) VALUES (?, 0, ?)", (f"q{i}-{b.hex()[:8]}", len(b))
            ))
            largest = max(largest, os.path.getsize(path + "-wal"))  # noqa: ASYNC240 - a test probe
    finally:
        writer.close()
        checkpointer.stop()
    assert forced == []
    # The forced RESTART comes at 10_000 pages; the catch-up starts the WAL over far sooner
    # (~100-300 pages on a quiet machine; up to ~3,000 seen with the CPU starved, when the
    # checkpointer thread falls behind).
    assert largest < 5000 * (4096 + 24), f"WAL grew to {largest} bytes"


def test_a_checkpoint_result_from_before_the_wal_started_over_is_discarded() -> None:
    cp = db.Checkpointer(":memory:")
    cp.wal_hook(None, "main", 5000)  # type: ignore[arg-type]
    cp.backfilled = 4990
    assert cp.behind() == 10
    cp.wal_hook(None, "main", 3)  # type: ignore[arg-type]  # the WAL started over
    assert (cp.backfilled, cp.behind()) == (0, 3)
