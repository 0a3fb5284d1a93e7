"""Database files and connections: pragmas, schema migrations, WAL checkpoints.

- Every connection: WAL, ``synchronous=NORMAL``, a busy timeout, foreign keys on.
- The writer's connection has auto-checkpoint off; a ``Checkpointer`` thread on its own
  connection checkpoints (PASSIVE) when the WAL grows or once a second, so commits never
  pay for copying WAL pages back (limits.md: that is half the cost of a small commit).
- Under continuous writes a PASSIVE checkpoint never quite reaches the end of the WAL, so
  SQLite never starts it over. Past ``WAL_RESTART_PAGES`` the writer, between two
  transactions, copies back the few pages the checkpointer has not yet (a PASSIVE
  checkpoint of at most ``RESTART_CATCH_UP_PAGES``, which never waits for readers); the
  next write transaction then starts the WAL over. Only past ``WAL_FORCE_RESTART_PAGES``
  (the checkpointer cannot catch up, e.g. a reader pins an old snapshot) does it run a
  blocking RESTART checkpoint.
- Migrations are numbered and tracked in ``PRAGMA user_version``; each runs in one
  transaction. Never edit a released migration: add the next one.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import apsw

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
#: WAL pages after which the writer asks for a checkpoint (4 MiB at 4 KiB pages), and again
#: after each further this many.
CHECKPOINT_PAGES = 1000
#: WAL pages past which the writer makes the WAL start over: under continuous writes a
#: PASSIVE checkpoint never catches up with the end of the WAL, so SQLite never starts it
#: over and it grows without bound (through LiteFS, a checkpoint per commit and, at ~1 GB,
#: LiteFS #445). The writer finishes the backfill itself (PASSIVE, between transactions)
#: once the checkpointer has left no more than RESTART_CATCH_UP_PAGES to copy, so that
#: pause stays short (a few ms; a RESTART that copies the whole WAL and waits for readers
#: stalled every write for 40 ms to 5 s).
WAL_RESTART_PAGES = 10 * CHECKPOINT_PAGES
#: Most WAL pages the writer copies back itself when it finishes a backfill (1 MiB).
RESTART_CATCH_UP_PAGES = CHECKPOINT_PAGES // 4
#: How long the writer then waits for readers to leave the old WAL (writes wait too).
RESTART_WAIT_MS = 20
#: WAL pages past which the writer runs a blocking RESTART checkpoint anyway (copy all,
#: wait up to the busy timeout for readers): the checkpointer is not keeping up.
WAL_FORCE_RESTART_PAGES = 4 * WAL_RESTART_PAGES

MIGRATIONS: list[str] = [
    # 1: the initial schema.
    """
    CREATE TABLE node (
        id        INTEGER PRIMARY KEY CHECK (id = 1),
        txid      INTEGER NOT NULL CHECK (txid >= 0),   -- reserved high-water mark of commit txids
        token_key BLOB    NOT NULL CHECK (length(token_key) >= 16)  -- signs lease tokens
    ) STRICT;
    INSERT INTO node (id, txid, token_key) VALUES (1, 0, randomblob(32));

    CREATE TABLE queues (
        name       TEXT    PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 128),
        paused     INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
        updated_at INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE jobs (
        id               TEXT    NOT NULL PRIMARY KEY,   -- UUIDv7, time-ordered
        queue_name       TEXT    NOT NULL CHECK (length(queue_name) BETWEEN 1 AND 128),
        payload          BLOB    NOT NULL,
        status           TEXT    NOT NULL
            CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
        attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
        priority         INTEGER NOT NULL DEFAULT 0,
        run_at           INTEGER NOT NULL,               -- microseconds since the epoch
        created_at       INTEGER NOT NULL,
        started_at       INTEGER,
        completed_at     INTEGER,
        lease_expires_at INTEGER,
        lease_id         TEXT,                           -- names the current delivery
        lease_us         INTEGER CHECK (lease_us > 0),   -- the current lease's length
        worker_id        TEXT,
        error_message    TEXT,
        idempotency_key  TEXT CHECK (length(idempotency_key) BETWEEN 1 AND 256),
        headers          TEXT,                           -- JSON object, NULL when empty
        result           BLOB,
        CONSTRAINT running_has_lease CHECK (
            (status = 'running') = (lease_id IS NOT NULL AND lease_expires_at IS NOT NULL)),
        CONSTRAINT final_has_completed_at CHECK (
            (status IN ('completed', 'failed', 'cancelled')) = (completed_at IS NOT NULL)),
        CONSTRAINT attempts_within_max CHECK (status <> 'running' OR attempts <= max_attempts)
    ) STRICT;

    -- The claim query: pending jobs of one queue, priority desc, run_at, then enqueue
    -- order (the implicit rowid ends every index entry).
    CREATE INDEX jobs_claim ON jobs (queue_name, priority DESC, run_at) WHERE status = 'pending';
    -- Lease expiry: the next running lease to lapse.
    CREATE INDEX jobs_lease_expiry ON jobs (lease_expires_at) WHERE status = 'running';
    -- Retention: finished jobs by age.
    CREATE INDEX jobs_finished ON jobs (completed_at)
        WHERE status IN ('completed', 'failed', 'cancelled');
    -- Idempotency: one retained job per (queue, key).
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (queue_name, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    """,
    # 2: the lease id that settled the job (Ack or Nack), so a retried Ack/Nack with the
    # same token (its first reply lost) is recognised and answered OK again without
    # changing anything. Cleared whenever the job is leased, cancelled or redriven, so it
    # is only ever set on a job that is not RUNNING.
    """
    ALTER TABLE jobs ADD COLUMN settled_lease_id TEXT
        CHECK (settled_lease_id IS NULL OR status <> 'running');
    """,
    # 3: other ids of a stored job. Two nodes that accept the same (queue, idempotency_key)
    # at the edge each answer with an id of their own; the primary stores the first and
    # records the second here, so GetJob by either id finds the one job on every node.
    # Removed by retention once the job is gone.
    """
    CREATE TABLE job_aliases (
        alias  TEXT NOT NULL PRIMARY KEY,
        job_id TEXT NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX job_aliases_job ON job_aliases (job_id);
    """,
    # 4: retention looks for the oldest finished jobs of one state: with completed_at alone
    # in the index, the sweep for CANCELLED (24 h) walked every COMPLETED job older than
    # its cutoff to find none (190 ms per sweep at 1M jobs, stalling the writer). Keyed by
    # (status, completed_at) it is a range scan of exactly the rows it deletes.
    """
    DROP INDEX jobs_finished;
    CREATE INDEX jobs_finished ON jobs (status, completed_at)
        WHERE status IN ('completed', 'failed', 'cancelled');
    """,
    # 5: the SDKs send every job without a caller's key under a generated one, "auto-<UUID>"
    # (their retries then never store it twice). Stored as text and indexed, that key cost
    # ~90 of the 486 bytes of a 200-byte pending job. Such a job is now stored under the
    # key's UUID as its id, with auto_key = 1 and no key column or index entry: the key
    # reads back as 'auto-' || id and a retry finds the job by its primary key.
    """
    ALTER TABLE jobs ADD COLUMN auto_key INTEGER NOT NULL DEFAULT 0 CHECK (auto_key IN (0, 1));
    """,
    # 6: unique jobs by state (JobSpec.unique_key): at most one active job per (queue,
    # unique_key). Enqueue looks the key up among pending and running jobs only, so the
    # index holds only those (finished jobs leave it, and it stays small).
    """
    ALTER TABLE jobs ADD COLUMN unique_key TEXT;
    CREATE INDEX jobs_unique ON jobs (queue_name, unique_key)
        WHERE unique_key IS NOT NULL AND status IN ('pending', 'running');
    """,
    # 7: a running job's progress, reported by its handler with Heartbeat.
    """
    ALTER TABLE jobs ADD COLUMN progress REAL;
    ALTER TABLE jobs ADD COLUMN progress_message TEXT;
    """,
    # 8: CancelJob on a RUNNING job keeps the lease id it cancelled, so that lease's next
    # Heartbeat answers CANCEL_REQUESTED (stop the handler) rather than a bare STALE.
    """
    ALTER TABLE jobs ADD COLUMN cancelled_lease_id TEXT;
    """,
    # 9: cron schedules (UpsertSchedule): the primary enqueues each tick's job, keyed by the
    # tick, and moves next_run_at in the same transaction.
    """
    CREATE TABLE schedules (
        name            TEXT    NOT NULL PRIMARY KEY,
        queue_name      TEXT    NOT NULL,
        cron            TEXT    NOT NULL,
        time_zone       TEXT    NOT NULL,
        template        TEXT    NOT NULL,   -- JSON: payload (base64), headers, priority, ...
        overlap_skip    INTEGER NOT NULL CHECK (overlap_skip IN (0, 1)),
        missed_run_once INTEGER NOT NULL CHECK (missed_run_once IN (0, 1)),
        paused          INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
        next_run_at     INTEGER,            -- NULL while paused
        last_run_at     INTEGER,
        last_job_id     TEXT,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX schedules_due ON schedules (next_run_at) WHERE next_run_at IS NOT NULL;
    """,
    # 10: per-queue rate limits (SetRateLimit): a token bucket kept with the queue, so every
    # worker shares it and a failover keeps it.
    """
    ALTER TABLE queues ADD COLUMN rate_jobs INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE queues ADD COLUMN rate_period_us INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE queues ADD COLUMN rate_tokens REAL NOT NULL DEFAULT 0;
    ALTER TABLE queues ADD COLUMN rate_at INTEGER NOT NULL DEFAULT 0;
    """,
    # 11: concurrency per key (JobSpec.concurrency_key): a claim counts the key's RUNNING
    # jobs through this index (its size is the running keyed jobs only); a queue that ever
    # had a keyed job is marked, so claims on other queues skip the count.
    """
    ALTER TABLE jobs ADD COLUMN concurrency_key TEXT;
    ALTER TABLE jobs ADD COLUMN concurrency_limit INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_key_running ON jobs (queue_name, concurrency_key)
        WHERE status = 'running' AND concurrency_key IS NOT NULL;
    ALTER TABLE queues ADD COLUMN keyed INTEGER NOT NULL DEFAULT 0;
    """,
    # 12: fair groups (JobSpec.group). Every job has a group ('' is the default one) and the
    # claim index gains it after the queue: a queue without groups claims from group '' as
    # before; a grouped queue (queues.grouped) claims from one group at a time. job_groups
    # holds, per (queue, group), the weight, the pass (leases taken / weight: a group's
    # virtual time; the group with the lowest pass that has ready jobs goes next) and
    # due_at, a lower bound of the earliest run_at among its PENDING jobs (NULL: none).
    # The triggers (the same upsert on insert and on update: SQLite triggers name one event)
    # keep due_at a lower bound whenever a job of a grouped queue becomes PENDING (enqueue,
    # nack, expiry, retry, unclaim), making the group's row if it has none; a queue without
    # groups pays one lookup of its row. The claim raises or clears due_at when it finds a
    # group with no ready job. A group that had no PENDING job starts again at the queue's virtual time
    # (queues.group_pass), so an idle group gets no saved-up burst. An idle group's row with
    # the default weight is pruned (it reads the same as none: the triggers make it again),
    # the default group's as any other.
    # Also the per-key rate limit (below).
    """
    ALTER TABLE jobs ADD COLUMN grp TEXT NOT NULL DEFAULT '';
    DROP INDEX jobs_claim;
    CREATE INDEX jobs_claim ON jobs (queue_name, grp, priority DESC, run_at) WHERE status = 'pending';
    ALTER TABLE queues ADD COLUMN grouped INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE queues ADD COLUMN group_pass REAL NOT NULL DEFAULT 0;
    CREATE TABLE job_groups (
        queue_name TEXT    NOT NULL,
        grp        TEXT    NOT NULL,
        weight     INTEGER NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 1000),
        pass       REAL    NOT NULL DEFAULT 0,
        due_at     INTEGER,
        PRIMARY KEY (queue_name, grp)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX job_groups_turn ON job_groups (queue_name, pass, due_at) WHERE due_at IS NOT NULL;
    -- Per-key rate limits (SetRateLimit with key_header): one bucket per value of the
    -- header, kept only while it is not full (a full bucket's row is pruned).
    ALTER TABLE queues ADD COLUMN key_rate_header TEXT;
    ALTER TABLE queues ADD COLUMN key_rate_jobs INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE queues ADD COLUMN key_rate_period_us INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE rate_keys (
        queue_name TEXT    NOT NULL,
        key        TEXT    NOT NULL,
        tokens     REAL    NOT NULL,
        at         INTEGER NOT NULL,
        PRIMARY KEY (queue_name, key)
    ) STRICT, WITHOUT ROWID;
    CREATE TRIGGER jobs_group_insert AFTER INSERT ON jobs WHEN NEW.status = 'pending' BEGIN
        INSERT INTO job_groups (queue_name, grp, pass, due_at)
            SELECT NEW.queue_name, NEW.grp, q.group_pass, NEW.run_at FROM queues q
            WHERE q.name = NEW.queue_name AND q.grouped
            ON CONFLICT (queue_name, grp) DO UPDATE SET
                pass = CASE WHEN due_at IS NULL THEN max(pass, excluded.pass) ELSE pass END,
                due_at = min(coalesce(due_at, excluded.due_at), excluded.due_at);
    END;
    CREATE TRIGGER jobs_group_pending AFTER UPDATE OF status, run_at ON jobs WHEN NEW.status = 'pending' BEGIN
        INSERT INTO job_groups (queue_name, grp, pass, due_at)
            SELECT NEW.queue_name, NEW.grp, q.group_pass, NEW.run_at FROM queues q
            WHERE q.name = NEW.queue_name AND q.grouped
            ON CONFLICT (queue_name, grp) DO UPDATE SET
                pass = CASE WHEN due_at IS NULL THEN max(pass, excluded.pass) ELSE pass END,
                due_at = min(coalesce(due_at, excluded.due_at), excluded.due_at);
    END;
    """,
]


def connect(path: str, *, writer: bool = False) -> apsw.Connection:
    """Open a connection with the project's pragmas. The writer's has auto-checkpoint off."""
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_NOMUTEX
    conn = apsw.Connection(path, flags=flags)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    if writer:
        conn.wal_autocheckpoint(0)
    return conn


def schema_version(path: str) -> int:
    """The schema version of the database at ``path`` (0 if it does not exist yet), read
    without writing anything (a LiteFS replica's file is read-only)."""
    if not os.path.exists(path):
        return 0
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.set_busy_timeout(1000)
        return int(conn.execute("PRAGMA user_version").get or 0)
    finally:
        conn.close()


def migrate(conn: apsw.Connection) -> int:
    """Bring the schema up to date; return the resulting version."""
    version: Any = conn.execute("PRAGMA user_version").fetchall()[0][0]
    version = int(version)
    if version > len(MIGRATIONS):
        raise RuntimeError(f"database schema version {version} is newer than this server ({len(MIGRATIONS)})")
    for number in range(version + 1, len(MIGRATIONS) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(MIGRATIONS[number - 1])
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("migrated database to schema version %d", number)
    return len(MIGRATIONS)


class Checkpointer:
    """Runs WAL checkpoints on its own thread and connection, off the write path."""

    def __init__(self, path: str, *, interval_s: float = 1.0) -> None:
        self._path = path
        self._interval = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        #: Frames in the WAL after the writer's last commit (from the WAL hook).
        self.wal_pages = 0
        #: Frames of the current WAL known copied back into the database (by the last
        #: PASSIVE checkpoint of this thread); and how many checkpoints have finished.
        self.backfilled = 0
        self.passes = 0
        self._generation = 0  # bumped when the WAL starts over: older results are void
        self._lock = threading.Lock()
        #: Held while this thread checkpoints: the writer, which finishes backfills
        #: itself, checkpoints only while it holds it (two checkpoints at once: BUSY).
        self.checkpointing = threading.Lock()
        self._requested_at = 0
        self._thread = threading.Thread(target=self._run, name="edgeq-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        """Ask for a checkpoint soon (the writer calls this when the WAL is large)."""
        self._wake.set()

    def wal_hook(self, _conn: apsw.Connection, _name: str, pages: int) -> int:
        """apsw WAL hook for the writer connection: wake the checkpointer once the WAL passes
        a size and once per further ``CHECKPOINT_PAGES`` (not on every commit: through
        LiteFS a checkpoint costs two fsyncs and a truncate on the FUSE mount)."""
        self.wal_pages = pages
        if pages < self._requested_at:  # the WAL started over
            self._requested_at = 0
            self.started_over()
        if pages >= self._requested_at + CHECKPOINT_PAGES:
            self._requested_at = pages
            self._wake.set()
        return apsw.SQLITE_OK

    def started_over(self) -> None:
        """The WAL was started over: nothing of it is backfilled yet."""
        with self._lock:
            self._generation += 1
            self.backfilled = 0

    def behind(self) -> int:
        """WAL frames the last checkpoint has not copied back (all of them if none ran)."""
        return max(0, self.wal_pages - self.backfilled)

    def _run(self) -> None:
        conn = connect(self._path)
        try:
            while not self._stop.is_set():
                self._wake.wait(self._interval)
                self._wake.clear()
                if self._stop.is_set():
                    break
                generation = self._generation
                try:
                    with self.checkpointing:
                        _frames, done = conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
                except apsw.BusyError:
                    continue
                except apsw.Error:
                    log.exception("WAL checkpoint failed")
                    continue
                with self._lock:
                    if generation == self._generation:
                        self.backfilled = done
                    self.passes += 1
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


def final_checkpoint(path: str) -> None:
    """Checkpoint and truncate the WAL at clean shutdown, so the file stands alone."""
    if not os.path.exists(path):
        return
    conn = connect(path)
    try:
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    except apsw.BusyError:
        log.warning("final checkpoint skipped: database busy")
    finally:
        conn.close()
