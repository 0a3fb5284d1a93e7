"""The group-commit writer: one thread owns the write connection; every write in the
server is an operation submitted here.

The thread takes whatever operations are waiting (up to ``max_batch``), runs them in one
``BEGIN IMMEDIATE ... COMMIT``, each inside its own savepoint, then resolves every
caller's future at once. A failing operation (a domain error such as NOT_FOUND, or a
constraint violation) rolls back only its savepoint; the others still commit. So one
fsync-free commit (``synchronous=NORMAL``) serves many RPCs, and throughput grows with
load instead of collapsing (limits.md: ~2.4-2.9k RPC/s, the bare gRPC ceiling).

``txid`` grows by one per committed transaction that changed rows and is handed back with
each result: on a single node it is the consistency token of the contract. It is kept in
memory; the database stores a reserved high-water mark (``TXID_BLOCK`` ahead), so after a
restart txids resume above anything handed out before. Under LiteFS the txid is read after
each COMMIT instead (``txid_after_commit``). A COMMIT SQLite accepted counts only once
LiteFS recorded it: if the position cannot be read (twice) or did not move, LiteFS may have
rolled the transaction back (it does, and exits, when it loses the lease mid-commit), so
the batch's callers get ``CommitUnconfirmed`` (ABORTED, COMMITTED_NOT_REPLICATED: retry
with the same keys), never OK with a stale txid and never "rolled back".

When the server has nothing else in progress (``inline_when()``: the app says so while at
most one RPC is being handled) and nothing is queued or being written, a small operation
(one that declares it touches at most ``INLINE_MAX_ROWS`` rows) runs at once on the
submitting event loop's thread, as a transaction of its own: the two thread hand-offs and
the GIL contention with the writer thread cost a lone Enqueue ~120 us of its ~360 us in the
server. Under concurrency the thread and its group commit win (ghz, 16 concurrent single
Enqueues: 1,890 calls/s through the thread, 1,550 inline), so then operations queue up
as before; order is kept, because an operation runs inline only when no earlier one is
still waiting. Never under LiteFS, where a COMMIT through the FUSE mount takes
milliseconds the event loop must not spend.

Between transactions the writer keeps the WAL bounded (see ``db.WAL_RESTART_PAGES``): it
finishes a backfill the checkpointer has nearly done (a short PASSIVE checkpoint, which
never waits for readers) so the next transaction starts the WAL over, and only when the
checkpointer cannot keep up does it run a blocking RESTART checkpoint.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import apsw

from . import db, metrics
from .clock import Clock
from .errors import CommitUnconfirmed, EdgeqError, Unavailable
from .store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Bookkeeping that must follow a committed operation even if its caller has gone away
#: (deadline passed, stream cancelled): runs on the caller's event loop, after COMMIT.
After = Callable[[T, int], None]
#: txids are reserved in blocks: the stored counter is a high-water mark written once per
#: block, not once per commit (that extra page write cost ~20% of a small commit).
TXID_BLOCK = 1000
Op = Callable[[Store, int], T]
_STOP = object()
#: The most rows an operation may declare (``rows=``) and still run inline.
INLINE_MAX_ROWS = 16


class _Pending:
    __slots__ = ("after", "context", "error", "future", "loop", "op", "result")

    def __init__(
        self,
        op: Op[Any],
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
        after: After[Any] | None,
    ) -> None:
        self.op = op
        self.future = future
        self.loop = loop
        self.after = after
        self.context = contextvars.copy_context()  # ``after`` runs in it (e.g. the RPC's trace id)
        self.result: Any = None
        self.error: BaseException | None = None


def _resolve(items: list[_Pending], txid: int) -> None:
    for item in items:
        if item.error is None and item.after is not None:
            try:
                item.context.run(item.after, item.result, txid)
            except Exception:
                log.exception("post-commit bookkeeping failed")
        if item.future.done():  # the caller was cancelled; the write stands
            continue
        if item.error is not None:
            item.future.set_exception(item.error)
        else:
            item.future.set_result((item.result, txid))


class Writer:
    """Serialises all writes through one connection with group commit."""

    def __init__(
        self,
        path: str,
        clock: Clock,
        *,
        max_batch: int = 512,
        checkpointer: db.Checkpointer | None = None,
        txid_after_commit: Callable[[], int] | None = None,
        inline_when: Callable[[], bool] | None = None,
    ) -> None:
        """``txid_after_commit``: where the txid comes from after each COMMIT (LiteFS: the
        ``-pos`` TXID); by default the writer's own counter. ``inline_when``: asked on the
        submitting loop's thread, True allows a small operation to run there when the
        writer is idle (see the module docstring); None: never."""
        self._path = path
        self._clock = clock
        self._max_batch = max_batch
        self._checkpointer = checkpointer
        self._txid_after_commit = txid_after_commit
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()  # no submit slips in behind the stop marker
        self._ready = threading.Event()
        self._txid = 0
        self._txid_reserved = 0
        self._startup_error: BaseException | None = None
        self._catch_up_pass = -1  # the checkpointer pass after which the writer last caught up
        self._thread = threading.Thread(target=self._run, name="edgeq-writer", daemon=True)
        self._inline_when = inline_when if txid_after_commit is None else None
        self._store: Store | None = None
        #: Held while a transaction runs, on the thread or inline.
        self._conn_lock = threading.Lock()
        #: Operations queued and not yet resolved by the thread (under ``_close_lock``).
        self._queued = 0
        self.commits = 0  # transactions committed (for metrics and the benchmark)
        self.ops = 0  # operations committed

    @property
    def alive(self) -> bool:
        """The writer thread is running (health reports NOT_SERVING otherwise)."""
        return self._thread.is_alive() and not self._closed

    @property
    def txid(self) -> int:
        """The last committed txid."""
        return self._txid

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def submit_nowait(
        self, op: Op[T], after: After[T] | None = None, *, rows: int | None = None
    ) -> asyncio.Future[tuple[T, int]]:
        """Queue ``op(store, now)`` for the next group transaction and return its future
        (result, txid). ``after(result, txid)`` runs on this loop once the operation has
        committed, whether or not anyone still awaits the future. ``rows``: at most how many
        rows ``op`` touches; with ``rows <= INLINE_MAX_ROWS`` it may run inline (see above),
        having committed (and ``after`` run) when this returns.

        The future fails with what ``op`` raised (its writes rolled back), or with
        Unavailable if the writer is closed.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[T, int]] = loop.create_future()
        item = _Pending(op, fut, loop, after)
        with self._close_lock:
            if self._closed:
                fut.set_exception(Unavailable("server is shutting down"))
                return fut
            inline = (
                self._inline_when is not None
                and rows is not None
                and rows <= INLINE_MAX_ROWS
                and self._queued == 0
                and self._store is not None
                and not self._wal_large()  # the thread bounds it after its next commit
                and self._inline_when()
                and self._conn_lock.acquire(blocking=False)
            )
            if not inline:
                self._queued += 1
                self._queue.put(item)
                return fut
        try:
            self._commit(self._store, [item])  # type: ignore[arg-type]  # checked above
        finally:
            self._conn_lock.release()
        _resolve([item], self._txid)
        return fut

    async def submit(self, op: Op[T], after: After[T] | None = None, *, rows: int | None = None) -> tuple[T, int]:
        """``submit_nowait`` and wait for the result."""
        return await self.submit_nowait(op, after, rows=rows)

    def close(self) -> None:
        """Finish what is queued, then stop the thread and close the connection."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=30)

    # ------------------------------------------------------------------ thread

    def _run(self) -> None:
        try:
            conn = db.connect(self._path, writer=True)
            db.migrate(conn)
            if self._checkpointer is not None:
                conn.set_wal_hook(self._checkpointer.wal_hook)
            store = self._store = Store(conn)
            # Resume above every txid that may have been handed out before a restart.
            self._txid = self._txid_reserved = store.txid()
            if self._txid_after_commit is not None:
                self._txid = self._txid_after_commit()
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            stopping = False
            while not stopping:
                first = self._queue.get()
                batch: list[_Pending] = []
                if first is _STOP:
                    break
                batch.append(first)
                while len(batch) < self._max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stopping = True
                        break
                    batch.append(item)
                with self._conn_lock:
                    if batch:
                        self._commit(store, batch)
                    if self._wal_large():
                        self._bound_wal(conn, self._checkpointer)  # type: ignore[arg-type]  # see _wal_large
                if batch:
                    with self._close_lock:  # before the callers hear back: their next write may be inline
                        self._queued -= len(batch)
                    self._hand_back(batch)
        finally:
            with self._conn_lock:
                self._store = None
                conn.close()

    def _wal_large(self) -> bool:
        """The WAL is past ``db.WAL_RESTART_PAGES``: writes go to the thread, which bounds it."""
        return self._checkpointer is not None and self._checkpointer.wal_pages >= db.WAL_RESTART_PAGES

    def _bound_wal(self, conn: apsw.Connection, cp: db.Checkpointer) -> None:
        """The WAL is past ``db.WAL_RESTART_PAGES``: make the next transaction start it over,
        pausing writes as little as possible (see ``db.py``)."""
        if cp.wal_pages >= db.WAL_FORCE_RESTART_PAGES:
            self._restart_wal(conn, cp)
        elif cp.passes != self._catch_up_pass:  # once per checkpointer pass, not per commit
            if cp.behind() > db.RESTART_CATCH_UP_PAGES:
                cp.request()
            elif cp.checkpointing.acquire(blocking=False):  # else: after the next commit
                try:
                    self._catch_up_pass = cp.passes
                    self._finish_backfill(conn, cp)
                finally:
                    cp.checkpointing.release()

    def _finish_backfill(self, conn: apsw.Connection, cp: db.Checkpointer) -> None:
        """The checkpointer has copied back all but a few WAL frames: copy the rest and make
        the next transaction start the WAL over (RESTART), waiting at most
        ``db.RESTART_WAIT_MS`` in all for readers to leave the old WAL. The wait polls
        finely: SQLite's own busy handler sleeps in steps of up to 100 ms and keeps missing
        the short gaps between a busy reader's queries. If readers hold on, this is tried
        again after the checkpointer's next pass."""
        started = time.perf_counter()
        deadline = started + db.RESTART_WAIT_MS / 1e3

        def poll(_tries: int) -> bool:
            time.sleep(0.0002)
            return time.perf_counter() < deadline

        conn.set_busy_handler(poll)
        try:
            frames, done = conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_RESTART)
        except apsw.BusyError:
            log.info("WAL catch-up: readers held on; %.1f ms", (time.perf_counter() - started) * 1e3)
            return
        except apsw.Error:
            log.exception("WAL catch-up checkpoint failed")
            return
        finally:
            conn.set_busy_timeout(db.BUSY_TIMEOUT_MS)
        cp.wal_pages = 0
        cp.started_over()
        log.info(
            "WAL catch-up: %d/%d frames, the WAL starts over; %.1f ms",
            done,
            frames,
            (time.perf_counter() - started) * 1e3,
        )

    def _restart_wal(self, conn: apsw.Connection, cp: db.Checkpointer) -> None:
        """Checkpoint everything and make the next transaction start the WAL over; writes
        wait meanwhile, readers are waited for (up to the busy timeout). Only when the
        checkpointer cannot keep up (``db.WAL_FORCE_RESTART_PAGES``)."""
        started = time.perf_counter()
        try:
            frames, done = conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_RESTART)
        except apsw.BusyError:
            log.warning("WAL restart checkpoint busy (a reader held on); retried after the next commit")
            return
        except apsw.Error:
            log.exception("WAL restart checkpoint failed")
            return
        cp.wal_pages = 0
        cp.started_over()
        log.warning(
            "WAL restart checkpoint (the checkpointer fell behind): %d/%d frames in %.1f ms",
            done,
            frames,
            (time.perf_counter() - started) * 1e3,
        )

    def _read_txid(self) -> int | None:
        """The txid after a COMMIT that SQLite accepted: read it (twice at most); None if
        that fails."""
        assert self._txid_after_commit is not None
        for attempt in (1, 2):
            try:
                return self._txid_after_commit()
            except Exception:
                if attempt == 2:
                    log.exception("reading the txid after COMMIT failed twice")
        return None

    def _commit(self, store: Store, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        now = self._clock.now()
        # A batch of one needs no savepoint: if it fails, the whole transaction rolls back.
        single = len(batch) == 1
        committed = changed = False
        try:
            store.begin()
            changes = store.conn.total_changes()
            for item in batch:
                if not single:
                    store.savepoint()
                try:
                    item.result = item.op(store, now)
                    if not single:
                        store.release()
                except (EdgeqError, apsw.ConstraintError) as exc:
                    if single:
                        store.rollback()
                    else:
                        store.rollback_to_savepoint()
                    item.error = exc
            if store.conn.in_transaction:
                # Adopt the new txid (and reservation) only once COMMIT succeeds: a failed
                # COMMIT loses the reservation it carried.
                txid, reserved = self._txid, self._txid_reserved
                counting = self._txid_after_commit is None
                if counting and store.conn.total_changes() != changes:  # only real writes move the txid
                    txid += 1
                    if txid > reserved:
                        reserved = store.reserve_txids(txid + TXID_BLOCK)
                changed = store.conn.total_changes() != changes
                store.commit()
                committed = True
                self._txid, self._txid_reserved = txid, reserved
        except BaseException as exc:
            log.exception("write transaction failed; %d operations rolled back", len(batch))
            try:
                store.rollback()
            except apsw.Error:
                log.exception("rollback failed")
            for item in batch:
                item.error = item.error or exc
        if committed and self._txid_after_commit is not None:
            # After the try. Under LiteFS a COMMIT that SQLite accepted is durable only once
            # LiteFS recorded it: LiteFS rolls a transaction back (and exits) when it loses
            # the lease mid-commit, and then the position cannot be read. Such a batch is
            # neither "written" nor "not written": CommitUnconfirmed (ABORTED,
            # COMMITTED_NOT_REPLICATED), which callers retry safely with the same keys.
            previous = self._txid
            txid_now = self._read_txid()
            unconfirmed = (
                "its position could not be read"
                if txid_now is None
                else f"its position stayed at {txid_now}"
                if changed and txid_now <= previous
                else ""
            )
            if unconfirmed:
                log.error("LiteFS did not confirm a committed batch of %d operations: %s", len(batch), unconfirmed)
                for item in batch:
                    item.error = item.error or CommitUnconfirmed(unconfirmed)
            else:
                assert txid_now is not None
                self._txid = txid_now
        self.commits += 1
        self.ops += len(batch)
        metrics.WRITE_BATCH.observe(len(batch))
        metrics.WRITE_SECONDS.observe(time.perf_counter() - started)

    def _hand_back(self, batch: list[_Pending]) -> None:
        """Resolve a committed (or failed) batch on each caller's loop, from the thread."""
        txid = self._txid
        by_loop: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        for item in batch:
            by_loop.setdefault(item.loop, []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items, txid)
            except RuntimeError:  # loop closed: nobody is waiting any more
                pass
