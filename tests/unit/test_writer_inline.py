"""The writer's inline path: a small write on an idle writer of a quiet server commits on
the submitting loop's thread; anything else (a busy writer, other RPCs in progress, a large
or undeclared operation, LiteFS) goes through the writer thread's group commit, and order
is kept."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

from edgeq_server import db
from edgeq_server.app import InFlight
from edgeq_server.clock import ManualClock
from edgeq_server.errors import NotFound
from edgeq_server.store import Store
from edgeq_server.writer import INLINE_MAX_ROWS, Writer


def _insert(name: str) -> object:
    def op(s: Store, now: int) -> int:
        s.conn.execute("INSERT INTO queues (name, paused, updated_at) VALUES (?, 0, ?)", (name, now))
        return threading.get_ident()

    return op


def _names(path: str) -> list[str]:
    conn = apsw.Connection(path)
    try:
        return [str(r[0]) for r in conn.execute("SELECT name FROM queues ORDER BY rowid")]
    finally:
        conn.close()


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "w.db")


async def test_a_small_write_on_an_idle_writer_commits_on_the_loop_thread_before_submit_returns(path: str) -> None:
    writer = Writer(path, ManualClock(), inline_when=lambda: True)
    writer.start()
    try:
        fut = writer.submit_nowait(_insert("a"), rows=1)  # type: ignore[arg-type]
        assert fut.done(), "an idle writer runs a small operation at once"
        ident, txid = fut.result()
        assert ident == threading.get_ident()
        assert txid == writer.txid == 1
        after: list[int] = []
        await writer.submit(_insert("b"), after=lambda _r, t: after.append(t), rows=INLINE_MAX_ROWS)  # type: ignore[arg-type]
        assert after == [2]
    finally:
        writer.close()
    assert _names(path) == ["a", "b"]


@pytest.mark.parametrize(
    ("rows", "inline_when"),
    [(None, lambda: True), (INLINE_MAX_ROWS + 1, lambda: True), (1, None), (1, lambda: False)],
    ids=["undeclared", "large", "never", "server-busy"],
)
async def test_large_or_undeclared_writes_and_a_busy_server_use_the_writer_thread(
    path: str, rows: int | None, inline_when: Callable[[], bool] | None
) -> None:
    writer = Writer(path, ManualClock(), inline_when=inline_when)
    writer.start()
    try:
        ident, _ = await writer.submit(_insert("a"), rows=rows)  # type: ignore[arg-type]
        assert ident != threading.get_ident()
    finally:
        writer.close()


async def test_the_server_counts_the_unary_rpcs_in_progress() -> None:
    """The app's gate: quiet while at most one unary RPC (the caller's own) is handled."""
    in_flight = InFlight()
    release = asyncio.Event()
    seen: list[bool] = []

    async def handler(_request: object, _context: object) -> None:
        seen.append(in_flight.quiet())
        await release.wait()

    tracked = in_flight.track(handler)
    first = asyncio.create_task(tracked(None, None))
    await asyncio.sleep(0)
    second = asyncio.create_task(tracked(None, None))
    await asyncio.sleep(0)
    assert seen == [True, False] and in_flight.calls == 2
    release.set()
    await asyncio.gather(first, second)
    assert in_flight.calls == 0 and in_flight.quiet()
    failing = in_flight.track(lambda _r, _c: asyncio.sleep(0, result=1 / 0))  # type: ignore[arg-type, func-returns-value]
    with pytest.raises(ZeroDivisionError):
        await failing(None, None)
    assert in_flight.calls == 0


async def test_litefs_commits_never_run_inline(path: str) -> None:
    """Under LiteFS (txid read after each COMMIT) a commit goes through FUSE: never on the loop."""
    positions = iter(range(7, 100))
    writer = Writer(path, ManualClock(), inline_when=lambda: True, txid_after_commit=lambda: next(positions))
    writer.start()
    try:
        ident, txid = await writer.submit(_insert("a"), rows=1)  # type: ignore[arg-type]
        assert ident != threading.get_ident() and txid == 8
    finally:
        writer.close()


async def test_while_the_thread_is_busy_small_writes_queue_and_commit_in_submission_order(path: str) -> None:
    writer = Writer(path, ManualClock(), inline_when=lambda: True)
    writer.start()
    started, go = threading.Event(), threading.Event()

    def hold(s: Store, now: int) -> int:
        s.conn.execute("INSERT INTO queues (name, paused, updated_at) VALUES ('held', 0, ?)", (now,))
        started.set()
        go.wait(10)
        return threading.get_ident()

    try:
        held = writer.submit_nowait(hold)  # no rows: the thread takes it
        assert await asyncio.to_thread(started.wait, 5)
        later = [writer.submit_nowait(_insert(f"q{i}"), rows=1) for i in range(5)]  # type: ignore[arg-type]
        assert not any(f.done() for f in later), "a busy writer queues small writes too"
        go.set()
        results = await asyncio.gather(held, *later)
        assert all(ident != threading.get_ident() for ident, _ in results)
        # Once the queue is empty again, the next small write is inline.
        ident, _ = await writer.submit(_insert("last"), rows=1)  # type: ignore[arg-type]
        assert ident == threading.get_ident()
    finally:
        go.set()
        writer.close()
    assert _names(path) == ["held", "q0", "q1", "q2", "q3", "q4", "last"]


async def test_an_inline_write_that_fails_rolls_back_and_fails_only_its_caller(path: str) -> None:
    writer = Writer(path, ManualClock(), inline_when=lambda: True)
    writer.start()

    def failing(s: Store, now: int) -> None:
        s.conn.execute("INSERT INTO queues (name, paused, updated_at) VALUES ('gone', 0, ?)", (now,))
        raise NotFound("job x not found")

    try:
        with pytest.raises(NotFound):
            await writer.submit(failing, rows=1)
        with pytest.raises(apsw.ConstraintError):  # a constraint violation, as on the thread
            await writer.submit(lambda s, now: s.conn.execute("INSERT INTO queues (name) VALUES (NULL)"), rows=1)
        await writer.submit(_insert("kept"), rows=1)  # type: ignore[arg-type]
        assert writer.txid == 1
    finally:
        writer.close()
    assert _names(path) == ["kept"]


async def test_inline_commits_still_keep_the_wal_bounded(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past WAL_RESTART_PAGES writes go to the thread, which bounds the WAL after its commit
    (and checkpoints there, never on the loop); then they run inline again."""
    monkeypatch.setattr(db, "CHECKPOINT_PAGES", 20)
    monkeypatch.setattr(db, "WAL_RESTART_PAGES", 100)
    monkeypatch.setattr(db, "WAL_FORCE_RESTART_PAGES", 200)
    checkpointer = db.Checkpointer(path)  # never started: only the writer can bound the WAL
    writer = Writer(path, ManualClock(), checkpointer=checkpointer, inline_when=lambda: True)
    writer.start()
    largest = inline = 0
    try:
        for i in range(1500):
            blob = os.urandom(3000)  # about a page per write
            fut = writer.submit_nowait(
                lambda s, now, b=blob, i=i: s.conn.execute(
                    "INSERT INTO queues (name, paused, updated_at) VALUES (?, 0, ?)", (f"q{i}-{b.hex()[:8]}", len(b))
                ),
                rows=1,
            )
            inline += fut.done()
            await fut
            largest = max(largest, os.path.getsize(path + "-wal"))  # noqa: ASYNC240 - a test probe
    finally:
        writer.close()
    # Without a checkpointer the WAL fills from WAL_RESTART_PAGES to the forced RESTART on
    # the thread every ~200 writes; in between, writes run inline again.
    assert inline > 500, f"only {inline} of 1500 writes ran inline"
    assert largest < 250 * (4096 + 24), f"WAL grew to {largest} bytes"  # as on the thread alone
    assert len(_names(path)) == 1500


async def test_after_runs_in_the_submitters_context_on_either_path(path: str) -> None:
    """Post-commit bookkeeping logs with the RPC's trace id: ``after`` sees the caller's
    context variables whether the thread or the loop ran the transaction."""
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="")
    seen: list[str] = []
    writer = Writer(path, ManualClock(), inline_when=lambda: True)
    writer.start()
    try:
        for i, rows in enumerate((None, 1)):  # the thread, then inline
            token = var.set(f"call-{i}")
            fut = writer.submit_nowait(_insert(f"q{i}"), after=lambda _r, _t: seen.append(var.get()), rows=rows)  # type: ignore[arg-type]
            var.reset(token)
            await fut
    finally:
        writer.close()
    assert seen == ["call-0", "call-1"]
