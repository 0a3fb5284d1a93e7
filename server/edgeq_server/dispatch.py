"""Push dispatch: Lease streams, their credits, and the loop that hands jobs to them.

Each open Lease stream is a ``LeaseStream`` with ``max_in_flight`` credits; a delivered job
holds one credit until it is settled (Ack/Nack), cancelled, or its lease expires.

The dispatcher keeps the set of queues that *may* have due work ("ready"). Anything that
can make work available calls ``notify(queues)`` after its commit: Enqueue, Nack with a
retry, lease expiry, RetryJob, ResumeQueue, and the maintenance timer when delayed jobs
come due. A single asyncio task then claims for every stream that has credits and listens
on a ready queue. All those claims are submitted together, so the writer runs them in one
transaction, one after the other: streams on the same queue share the work and each job
goes to exactly one stream. A queue leaves the ready set only when a claim on it came back
short and nothing was notified for it since the claim was submitted. No polling anywhere:
an idle server wakes only for keepalives and timers.

Only the primary claims: while ``is_primary()`` is false the loop claims nothing, and
``end_streams`` (called when the node loses primacy, and on drain) ends every open stream
with UNAVAILABLE so its worker reconnects to a node that can serve it. Short-lived work
(unclaiming what a closed stream was never sent) runs as supervised tasks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import metrics
from .errors import Unavailable
from .models import Job
from .store import Store
from .supervise import Supervisor
from .tokens import TokenCodec
from .writer import Writer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class End:
    """Put on a stream's send queue: the stream ends with UNAVAILABLE (``reason`` as ErrorInfo)."""

    message: str
    reason: str

    def error(self) -> Unavailable:
        return Unavailable(self.message, reason=self.reason, retry_after=0.2)


DRAINING = End("server is draining; reconnect to another node", "DRAINING")


@dataclass(frozen=True, slots=True)
class Delivery:
    job: Job
    token: str


@dataclass(eq=False)
class LeaseStream:
    """One open Lease stream."""

    id: int
    queues: tuple[str, ...]
    worker_id: str
    max_in_flight: int
    lease_us: int
    outstanding: set[str] = field(default_factory=set)  # job ids leased, not yet settled
    claiming: int = 0
    closed: bool = False
    #: What the stream's handler sends next: batches of deliveries, or an End.
    sends: asyncio.Queue[list[Delivery] | End] = field(default_factory=asyncio.Queue)

    @property
    def credits(self) -> int:
        return self.max_in_flight - len(self.outstanding) - self.claiming


class Dispatcher:
    def __init__(
        self,
        writer: Writer,
        codec: TokenCodec,
        supervisor: Supervisor,
        *,
        on_leased: Callable[[int], None] = lambda _t: None,
        on_throttled: Callable[[str, int], None] = lambda _q, _t: None,
        is_primary: Callable[[], bool] = lambda: True,
    ) -> None:
        self._writer = writer
        self._codec = codec
        self._supervisor = supervisor
        self._on_leased = on_leased
        self._on_throttled = on_throttled  # a rate-limited queue has its next token then: look again
        self._is_primary = is_primary
        self._streams: dict[int, LeaseStream] = {}
        #: Queues whose ready jobs a concurrency key's limit held back: looked at again
        #: when any lease ends (it may be one of that key's).
        self._key_waiting: set[str] = set()
        self._settles = 0  # leases ended so far (a claim in flight compares it)
        self._ids = itertools.count(1)
        self._ready: set[str] = set()
        # Per ready queue, the notification generation (from one global counter, so an
        # entry can be dropped when its queue leaves the ready set without any ABA risk).
        self._gen: dict[str, int] = {}
        self._gens = itertools.count(1)
        self._leases: dict[str, LeaseStream] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._accepting = True
        self._stopping = False
        self._rotate = 0
        self._unclaiming: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ streams

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def outstanding(self) -> int:
        """Leases handed out by this node and not yet settled, cancelled or expired."""
        return len(self._leases)

    def open(self, queues: Iterable[str], worker_id: str, max_in_flight: int, lease_us: int) -> LeaseStream:
        if not self._accepting:
            raise Unavailable("server is draining; reconnect to another node or retry")
        stream = LeaseStream(next(self._ids), tuple(dict.fromkeys(queues)), worker_id, max_in_flight, lease_us)
        self._streams[stream.id] = stream
        metrics.STREAMS.set(len(self._streams))
        # A new listener: its queues may hold work nobody was listening for.
        self.notify(stream.queues)
        return stream

    def close(self, stream: LeaseStream) -> None:
        """The stream ended. Jobs it was sent stay leased: the worker may still settle them,
        and expiry returns them if it does not. Jobs still waiting in its send queue were never
        sent: they go back to PENDING without counting the attempt."""
        stream.closed = True
        self._streams.pop(stream.id, None)
        metrics.STREAMS.set(len(self._streams))
        unsent: list[Job] = []
        while not stream.sends.empty():
            batch = stream.sends.get_nowait()
            if isinstance(batch, End):
                continue
            for d in batch:
                unsent.append(d.job)
                stream.outstanding.discard(d.job.id)
                if self._leases.get(d.job.id) is stream:
                    del self._leases[d.job.id]
        if unsent:
            self._spawn_unclaim(unsent)

    def _spawn_unclaim(self, jobs: list[Job]) -> None:
        task = self._supervisor.task("dispatch-unclaim", self._unclaim(jobs))
        self._unclaiming.add(task)
        task.add_done_callback(self._unclaiming.discard)

    def end_streams(self, end: End) -> int:
        """End every open stream with ``end`` (this node lost primacy, or drains). Their
        workers reconnect; what they hold stays leased until settled (through the new
        primary) or expired. Returns how many streams were told to end."""
        streams = list(self._streams.values())
        for stream in streams:
            stream.sends.put_nowait(end)
        return len(streams)

    def role_changed(self, primary: bool) -> None:
        """The node became primary (claims may start) or stopped being it (no claims; the
        leases this node handed out are the new primary's business now)."""
        if primary:
            self.notify(q for s in self._streams.values() for q in s.queues)
            return
        self._leases.clear()
        for stream in self._streams.values():
            stream.outstanding.clear()
        metrics.OUTSTANDING.set(0)

    # ------------------------------------------------------------------ events

    def notify(self, queues: Iterable[str]) -> None:
        """Work may be due now on ``queues`` (called after the commit that made it so)."""
        for q in queues:
            self._ready.add(q)
            self._gen[q] = next(self._gens)
        self._wake.set()

    def settled(self, job_ids: Iterable[str]) -> None:
        """These jobs' leases ended (acked, nacked, cancelled, expired): return credit, and
        look again at queues a concurrency key's limit held back."""
        self._settles += 1
        if self._key_waiting:
            waiting, self._key_waiting = self._key_waiting, set()
            self.notify(waiting)
        freed = False
        for job_id in job_ids:
            stream = self._leases.pop(job_id, None)
            if stream is not None:
                stream.outstanding.discard(job_id)
                freed = True
        if freed:
            metrics.OUTSTANDING.set(len(self._leases))
            self._wake.set()

    # ------------------------------------------------------------------ loop

    def start(self) -> None:
        self._task = self._supervisor.loop("dispatch", self._run, finished=lambda: self._stopping)

    async def drain(self) -> None:
        """Stop handing out jobs and end every stream (workers reconnect elsewhere).

        The pass in progress finishes first (never cancelled mid-claim: a committed claim
        whose result nobody receives would hold a job RUNNING with an attempt spent), so
        what it claimed is delivered ahead of the end of each stream.
        """
        self._accepting = False
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        self.end_streams(DRAINING)
        while self._unclaiming:
            await asyncio.gather(*self._unclaiming, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self._pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatch pass failed")
                await asyncio.sleep(0.1)
                self._wake.set()

    async def _pass(self) -> None:
        streams = list(self._streams.values())
        if not streams or not self._ready or not self._is_primary():
            return
        self._rotate = (self._rotate + 1) % len(streams)
        streams = streams[self._rotate :] + streams[: self._rotate]
        claims = []
        for s in streams:
            want = s.credits
            queues = [q for q in s.queues if q in self._ready]
            if want <= 0 or not queues:
                continue
            s.claiming += want
            gens = {q: self._gen.get(q, 0) for q in queues}
            claims.append(self._claim(s, queues, want, gens))
        if claims:
            await asyncio.gather(*claims)

    async def _claim(self, s: LeaseStream, queues: list[str], want: int, gens: dict[str, int]) -> None:
        throttled: dict[str, int] = {}
        key_waiting: set[str] = set()
        settles = self._settles

        def op(store: Store, now: int) -> list[Job]:
            throttled.clear()  # a retried op starts over
            key_waiting.clear()
            return store.claim(queues, want, s.worker_id, s.lease_us, now, throttled, key_waiting)

        try:
            jobs, _ = await self._writer.submit(op, rows=want)
        finally:
            s.claiming -= want
        for queue, at in throttled.items():  # marked not ready below; the timer brings it back
            self._on_throttled(queue, at)
        if len(jobs) < want:
            for q in queues:
                if self._gen.get(q, 0) == gens[q]:
                    self._ready.discard(q)
                    self._gen.pop(q, None)
        if key_waiting:
            if self._settles != settles:  # a lease ended while this claim ran: maybe one of the key's
                self.notify(key_waiting)
            else:  # an ended lease brings them back (settled())
                self._key_waiting |= key_waiting
        if not jobs:
            return
        if s.closed:
            await self._unclaim(jobs)
            return
        deliveries = []
        for job in jobs:
            assert job.lease_id is not None and job.lease_expires_at is not None
            previous = self._leases.get(job.id)
            if previous is not None:
                previous.outstanding.discard(job.id)
            self._leases[job.id] = s
            s.outstanding.add(job.id)
            deliveries.append(Delivery(job, self._codec.issue(job.id, job.lease_id)))
        for queue, n in Counter(j.queue for j in jobs).items():  # one metric update per queue, not per job
            metrics.DELIVERED.labels(metrics.queue_label(queue)).inc(n)
        waits: dict[str, Any] = {}  # one label lookup per queue, not per job
        for job in jobs:  # waited from when it could run (run_at, or its enqueue) to this lease
            if job.started_at is not None:
                hist = waits.get(job.queue) or waits.setdefault(
                    job.queue, metrics.JOB_WAIT.labels(metrics.queue_label(job.queue))
                )
                hist.observe(max(0, job.started_at - max(job.run_at, job.created_at)) / 1e6)
        metrics.OUTSTANDING.set(len(self._leases))
        s.sends.put_nowait(deliveries)
        self._on_leased(min(j.lease_expires_at for j in jobs if j.lease_expires_at is not None))

    async def _unclaim(self, jobs: list[Job]) -> None:
        pairs = [(j.id, j.lease_id) for j in jobs if j.lease_id is not None]
        queues = {j.queue for j in jobs}
        await self._writer.submit(
            lambda store, now: store.unclaim(pairs, now), after=lambda _n, _t: self.notify(queues)
        )
