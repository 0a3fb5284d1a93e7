"""The enqueue buffer (``--outbox-path``): Enqueue on a node that cannot reach the primary.

Off by default. When on, a node that is not primary handles Enqueue like this:

1. Validate locally, exactly as the primary would: a bad request is refused here with the
   field named, and nothing is stored.
2. Give every job without an idempotency key one (``outbox-<uuid7>``), and every job its id
   (a UUIDv7, ``JobSpec.job_id``), *before* the first attempt: if a forward times out after
   the primary committed it, the later re-send is a duplicate the primary recognises (by key
   and by id), so each job is stored exactly once, under the id this node answered with.
3. Forward to the primary, waiting at most ``outbox_forward_timeout_seconds``. If the
   primary is unreachable (no primary, UNAVAILABLE, or that wait ran out), append the request
   to the buffer file (outside the LiteFS mount, fsynced) and answer OK with
   ``buffered = true`` and the jobs' ids (the ids they will have on the primary). While
   anything is buffered, new Enqueues are buffered behind it, so jobs reach the primary in
   the order this node accepted them.

Appends are cancellation-safe: the append and the count run as one shielded step, so a
caller that goes away mid-append leaves either a row that will drain, or nothing, and the
in-memory counters stay exact without counting rows per request.

The drain (a supervised loop) sends the buffered requests one at a time, oldest first,
whenever a primary answers, deleting each only after the primary's OK. Transient failures
(UNAVAILABLE, deadline, ABORTED committed-not-replicated: the keys make re-sending safe)
back off with jitter, 0.1 s doubling to 2 s, reset by a success or a new primary. A request
the primary refuses for good (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, PERMISSION_DENIED...,
or INTERNAL/UNKNOWN ``INTERNAL_ATTEMPTS`` times) moves to the dead table (the row stays in
the file with the reason), is logged and counted (GetNodeInfo ``outbox_dead``, the
``edgeq_enqueue_buffer_dead`` gauge, ``edgeq node``), and the rows behind it go on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable
from typing import Any

import grpc

from edgeq.v1 import queue_pb2 as pb

from .. import metrics, validate
from ..clock import Clock
from ..config import Config
from ..errors import Forwarded, Unavailable
from ..ids import uuid7
from ..store import OutboxStore
from .forward import Forwarder
from .litefs import LiteFSNode

log = logging.getLogger(__name__)

KEY_PREFIX = "outbox-"
#: Deadline of one drain call, and the backoff between failed drain attempts.
DRAIN_TIMEOUT_SECONDS = 5.0
RETRY_MIN_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0
#: INTERNAL/UNKNOWN answers for one request before it is dead.
INTERNAL_ATTEMPTS = 5

#: Answers after which the same request is sent again later.
TRANSIENT = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED, grpc.StatusCode.UNAUTHENTICATED,
})
#: Answers that may be transient, tried ``INTERNAL_ATTEMPTS`` times.
DOUBTFUL = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})

Ctx = grpc.aio.ServicerContext[Any, Any]


class EnqueueBuffer:
    def __init__(
        self, cfg: Config, clock: Clock, node: LiteFSNode, forwarder: Forwarder,
        metadata: tuple[tuple[str, str], ...],
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self._node = node
        self._forwarder = forwarder
        self._metadata = metadata  # node-to-node credentials for the drain
        self._store: OutboxStore | None = None
        self._lock = asyncio.Lock()  # appends and the drain's deletes keep order
        self._wake = asyncio.Event()
        self.pending = 0
        self.dead = 0

    async def open(self) -> None:
        self._store = await asyncio.to_thread(OutboxStore, self._cfg.outbox_path)
        await self._recount()
        if self.pending:
            log.info("outbox: %d buffered Enqueue request(s) to send", self.pending)
            self._wake.set()

    async def close(self) -> None:
        if self._store is not None:
            async with self._lock:
                await asyncio.to_thread(self._store.close)

    async def _run(self, fn: Callable[[OutboxStore], Any]) -> Any:
        store = self._store
        assert store is not None
        return await asyncio.to_thread(fn, store)

    async def _recount(self) -> None:
        """Counters from the file itself (at start, and whenever nothing is pending: both
        counts are then cheap)."""
        self.pending, self.dead = await self._run(lambda s: (s.pending(), s.dead()))
        self._publish()

    def _counted(self, pending: int, dead: int = 0) -> None:
        """Move the counters with a change just made to the file (the lock is held, and
        appends are shielded, so they stay exact without counting rows per request)."""
        self.pending += pending
        self.dead += dead
        self._publish()

    def _publish(self) -> None:
        metrics.BUFFER_PENDING.set(self.pending)
        metrics.BUFFER_DEAD.set(self.dead)

    async def enqueue(self, request: pb.EnqueueRequest, context: Ctx) -> pb.EnqueueResponse:
        """Forward to the primary, or buffer when it cannot be reached."""
        validate.enqueue(request, self._cfg, self._clock.now())  # raises InvalidArgument naming the field
        keyed = pb.EnqueueRequest()
        keyed.CopyFrom(request)
        for spec in keyed.jobs:
            if not spec.idempotency_key:
                spec.idempotency_key = KEY_PREFIX + uuid7()
            if not spec.job_id:
                spec.job_id = uuid7()
        primary = self._node.primary_address()
        if not self.pending and primary is not None:
            try:
                response: pb.EnqueueResponse = await self._forwarder.unary(
                    primary, "Enqueue", keyed, context, at_most=self._cfg.outbox_forward_timeout_seconds
                )
                return response
            except Unavailable:
                pass
            except Forwarded as exc:
                if exc.code not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED):
                    raise
        # Shielded: if the caller goes away mid-append, the row and the count still agree.
        await asyncio.shield(asyncio.ensure_future(self._append(keyed)))
        return pb.EnqueueResponse(
            results=[pb.EnqueueResult(job_id=s.job_id, idempotency_key=s.idempotency_key) for s in keyed.jobs],
            buffered=True,
        )

    async def _append(self, request: pb.EnqueueRequest) -> None:
        blob = request.SerializeToString()
        now = self._clock.now()
        async with self._lock:
            await self._run(lambda s: s.append(blob, len(request.jobs), now))
            self._counted(+1)
        self._wake.set()

    def _target(self) -> str | None:
        if self._node.is_primary():  # promoted: send to ourselves, the write path is the same
            return self._cfg.address
        return self._node.primary_address()

    async def drain_loop(self) -> None:
        """Send buffered requests to the primary, oldest first (runs until cancelled)."""
        delay = RETRY_MIN_SECONDS
        doubtful = 0  # INTERNAL/UNKNOWN answers for the current head row
        head = -1
        last_target: str | None = None
        while True:
            await self._wake.wait()
            async with self._lock:  # an append cannot slip between "empty" and clear()
                row = await self._run(lambda s: s.oldest())
                if row is None:
                    await self._recount()
                    self._wake.clear()
                    continue
            seq, blob = row
            if seq != head:
                head, doubtful = seq, 0
            target = self._target()
            if target != last_target:
                delay, last_target = RETRY_MIN_SECONDS, target
            try:
                if target is None:
                    raise Unavailable("no primary")
                await self._forwarder.call(
                    target, "Enqueue", pb.EnqueueRequest.FromString(blob),
                    seconds=DRAIN_TIMEOUT_SECONDS, metadata=self._metadata,
                )
            except (Unavailable, Forwarded) as exc:
                code = exc.code if isinstance(exc, Forwarded) else grpc.StatusCode.UNAVAILABLE
                if code in DOUBTFUL:
                    doubtful += 1
                if code in TRANSIENT or (code in DOUBTFUL and doubtful < INTERNAL_ATTEMPTS):
                    log.debug("outbox: request %d not sent yet (%s); retrying in <= %.2fs", seq, code.name, delay)
                    await asyncio.sleep(random.uniform(delay / 2, delay))
                    delay = min(delay * 2, RETRY_MAX_SECONDS)
                    continue
                reason = f"{code.name}: {exc.details}" if isinstance(exc, Forwarded) else str(exc)
                log.error(
                    "outbox: primary refused buffered request %d for good (%s); moved to the dead table in %s",
                    seq, reason, self._cfg.outbox_path,
                )
                async with self._lock:
                    await self._run(functools.partial(OutboxStore.reject, seq=seq, reason=reason))
                    self._counted(-1, +1)
                continue
            delay = RETRY_MIN_SECONDS
            async with self._lock:
                await self._run(functools.partial(OutboxStore.delete, seq=seq))
                self._counted(-1)
            log.debug("outbox: request %d stored on %s", seq, target)
