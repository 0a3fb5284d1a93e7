"""The partition outbox: Enqueue on a replica that cannot reach the primary.

Off by default (``outbox_path``). When on, a replica handles Enqueue like this:

1. Validate locally, exactly as the primary would: a bad request is refused here with the
   field named, and nothing is stored.
2. Give every job without an idempotency key one (``outbox-<uuid7>``), *before* the first
   attempt: if a forward times out after the primary committed it, the later re-send is a
   duplicate the primary recognises, so each job is stored exactly once.
3. Forward to the primary, waiting at most ``outbox_forward_timeout_seconds``. If the
   primary is unreachable (no primary, UNAVAILABLE, or that wait ran out), append the request
   to the outbox file (outside the LiteFS mount, fsynced) and answer OK with
   ``buffered = true``. While anything is buffered, new Enqueues are buffered behind it, so
   jobs reach the primary in the order this replica accepted them.

A drain task sends the buffered requests one at a time, oldest first, whenever a primary
answers, deleting each only after the primary's OK. A request the primary refuses for good
(INVALID_ARGUMENT, PERMISSION_DENIED...: step 1 makes this unlikely) is kept in the file
marked ``rejected`` and logged, never dropped silently.
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

from . import validate
from .clock import Clock
from .config import Config
from .errors import Unavailable
from .ids import uuid7
from .replication import Forwarded, Forwarder, LiteFSNode
from .store import OutboxStore

log = logging.getLogger(__name__)

KEY_PREFIX = "outbox-"
#: Deadline of one drain call, and the backoff between failed drain attempts.
DRAIN_TIMEOUT_SECONDS = 5.0
RETRY_MIN_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0

Ctx = grpc.aio.ServicerContext[Any, Any]


class Outbox:
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
        self._task: asyncio.Task[None] | None = None
        self.pending = 0

    async def start(self) -> None:
        self._store = await asyncio.to_thread(OutboxStore, self._cfg.outbox_path)
        self.pending = await self._run(lambda s: s.pending())
        if self.pending:
            log.info("outbox: %d buffered Enqueue request(s) to send", self.pending)
            self._wake.set()
        self._task = asyncio.create_task(self._drain(), name="edgeq-outbox-drain")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._store is not None:
            await asyncio.to_thread(self._store.close)

    async def _run(self, fn: Callable[[OutboxStore], Any]) -> Any:
        store = self._store
        assert store is not None
        return await asyncio.to_thread(fn, store)

    async def enqueue(self, request: pb.EnqueueRequest, context: Ctx) -> pb.EnqueueResponse:
        """Forward to the primary, or buffer when it cannot be reached."""
        validate.enqueue(request, self._cfg, self._clock.now())  # raises InvalidArgument naming the field
        keyed = pb.EnqueueRequest()
        keyed.CopyFrom(request)
        for spec in keyed.jobs:
            if not spec.idempotency_key:
                spec.idempotency_key = KEY_PREFIX + uuid7()
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
                if exc.code != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
        return await self._buffer(keyed)

    async def _buffer(self, request: pb.EnqueueRequest) -> pb.EnqueueResponse:
        blob = request.SerializeToString()
        now = self._clock.now()
        async with self._lock:
            await self._run(lambda s: s.append(blob, len(request.jobs), now))
            self.pending += 1
        self._wake.set()
        return pb.EnqueueResponse(
            results=[pb.EnqueueResult(idempotency_key=s.idempotency_key) for s in request.jobs], buffered=True
        )

    def _target(self) -> str | None:
        if self._node.is_primary():  # promoted: send to ourselves, the write path is the same
            return self._cfg.address
        return self._node.primary_address()

    async def _drain(self) -> None:
        delay = RETRY_MIN_SECONDS
        while True:
            await self._wake.wait()
            async with self._lock:  # an append cannot slip between "empty" and clear()
                row = await self._run(lambda s: s.oldest())
                if row is None:
                    self.pending = 0
                    self._wake.clear()
                    continue
            seq, blob = row
            target = self._target()
            try:
                if target is None:
                    raise Unavailable("no primary")
                await self._forwarder.call(
                    target, "Enqueue", pb.EnqueueRequest.FromString(blob),
                    seconds=DRAIN_TIMEOUT_SECONDS, metadata=self._metadata,
                )
            except (Unavailable, Forwarded) as exc:
                transient = isinstance(exc, Unavailable) or exc.code in (
                    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                    grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAUTHENTICATED,
                )
                if transient:
                    await asyncio.sleep(random.uniform(delay / 2, delay))
                    delay = min(delay * 2, RETRY_MAX_SECONDS)
                    continue
                reason = f"{exc.code.name}: {exc.details}" if isinstance(exc, Forwarded) else str(exc)
                log.error("outbox: primary refused buffered request %d for good (%s); kept in %s",
                          seq, reason, self._cfg.outbox_path)
                async with self._lock:
                    await self._run(functools.partial(OutboxStore.reject, seq=seq, reason=reason))
                    self.pending -= 1
                continue
            delay = RETRY_MIN_SECONDS
            async with self._lock:
                await self._run(functools.partial(OutboxStore.delete, seq=seq))
                self.pending -= 1
            log.debug("outbox: request %d stored on %s", seq, target)
