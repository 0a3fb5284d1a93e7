"""Authentication and authorization: who a bearer token is, and what it may do.

Owns the tokens (``Tokens``) and their enforcement on every RPC (``Guard`` around each
QueueService handler; ``NodeAuth``, an interceptor, for node-to-node RPCs).

- ``--auth-token``: every scope on every queue (a shorthand). ``--client-token``: enqueue,
  consume and read (no admin RPCs).
- ``--tokens-file FILE`` (TOML): named tokens, each with the SHA-256 of the token (never
  the token itself), scopes from ``enqueue`` (Enqueue), ``consume`` (Lease, Ack, Nack,
  Heartbeat), ``read`` (GetJob, ListJobs, GetQueueStats, GetNodeInfo) and ``admin``
  (CancelJob, RetryJob, CancelJobs, RetryJobs, PauseQueue, ResumeQueue), and optional queue patterns
  (``emails.*``, shell-style). Re-read when it changes; a token removed from it is revoked
  at once, and its open Lease streams end (UNAUTHENTICATED) within ``RELOAD_SECONDS``.
- ``--cluster-secret`` (default: the auth token): how nodes authenticate to each other —
  node-to-node RPCs (ReplicationService) and the forwarded-call marker count only with it.

Clients send ``authorization: Bearer <token>``. No token, or an unknown one, is
UNAUTHENTICATED; a scope or queue the token lacks is PERMISSION_DENIED naming the field.
Repeated failures from one address are refused for a while without looking the token up
(``FAIL_LIMIT`` in ``FAIL_WINDOW_SECONDS``) and counted in a metric. Tokens never appear in
logs or error messages. Health and reflection stay open. With no token configured at all,
authentication is off.
"""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import hashlib
import hmac
import logging
import os
import re
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from . import metrics
from .errors import NotFound, PermissionDenied, Unauthenticated

if TYPE_CHECKING:  # grpc-stubs declare the interceptor generic; the runtime class is not
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor

log = logging.getLogger(__name__)

SCOPES = ("enqueue", "consume", "read", "admin")
#: The scope each QueueService RPC needs.
METHOD_SCOPE = {
    "Enqueue": "enqueue",
    "Lease": "consume", "Ack": "consume", "Nack": "consume", "Heartbeat": "consume",
    "GetJob": "read", "ListJobs": "read", "GetQueueStats": "read", "GetNodeInfo": "read",
    "CancelJob": "admin", "RetryJob": "admin", "CancelJobs": "admin", "RetryJobs": "admin",
    "PauseQueue": "admin", "ResumeQueue": "admin", "SetRateLimit": "admin",
    "UpsertSchedule": "admin", "DeleteSchedule": "admin", "PauseSchedule": "admin", "ResumeSchedule": "admin",
    "ListSchedules": "read", "SetGroupWeight": "admin", "ListGroups": "read",
}
#: Schedule RPCs that name no queue: a queue-restricted token may not use them (it could
#: reach another tenant's schedule by name).
UNRESTRICTED_ONLY = frozenset({"DeleteSchedule", "PauseSchedule", "ResumeSchedule", "ListSchedules"})
ADMIN_METHODS = frozenset(m for m, s in METHOD_SCOPE.items() if s == "admin")
#: How often the tokens file is checked for changes (and revoked streams ended).
RELOAD_SECONDS = 0.5
#: Failed authentications from one address within the window before it is refused unheard.
FAIL_LIMIT = 20
FAIL_WINDOW_SECONDS = 10.0
#: Addresses whose failures are remembered (the oldest are forgotten first).
FAIL_PEERS = 10_000
#: Metadata a forwarding node adds so the primary can tell a node's forward from a client.
NODE_TOKEN_KEY = "edgeq-node-token"

_HEX64 = re.compile(r"[0-9a-f]{64}")
#: Other spellings of an entry's fields that the tokens file accepts.
_ALIASES = {"hash": "sha256", "token_sha256": "sha256", "sha256_hex": "sha256", "queue_patterns": "queues",
            "patterns": "queues"}


@dataclass(frozen=True)
class Principal:
    """Who a token is: its name (for logs), scopes and queue patterns (None: all queues)."""

    name: str
    scopes: frozenset[str]
    queues: tuple[str, ...] | None = None
    node: bool = False  # another node of this cluster

    def may_queue(self, queue: str) -> bool:
        return self.queues is None or any(fnmatch.fnmatchcase(queue, p) for p in self.queues)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_tokens_file(path: str) -> dict[str, Principal]:
    """The tokens of a TOML file, by SHA-256; ValueError naming the entry and field."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"tokens_file: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"tokens_file: {path} is not valid TOML: {exc}") from None
    table = "tokens" if "tokens" in doc else "token"  # [[token]] entries; [[tokens]] is read too
    entries = doc.get(table, [])
    unknown = set(doc) - {table}
    if unknown or not isinstance(entries, list):
        raise ValueError(f"tokens_file: {path}: expected only [[token]] tables, found {sorted(unknown) or table}")
    out: dict[str, Principal] = {}
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"tokens_file: {path}: token[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be a table")
        entry = {_ALIASES.get(k, k): v for k, v in entry.items()}
        extra = set(entry) - {"name", "sha256", "scopes", "queues"}
        if extra:
            raise ValueError(f"{where}: unknown field(s) {sorted(extra)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name or name in names:
            raise ValueError(f"{where}.name: must be a non-empty string, unique in the file")
        sha = entry.get("sha256")
        if isinstance(sha, str):
            sha = sha.lower().removeprefix("sha256:")
        if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
            raise ValueError(f"{where}.sha256: must be the 64 hex digits of the token's SHA-256 (not the token)")
        scopes = entry.get("scopes")
        if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
            raise ValueError(f"{where}.scopes: must be a non-empty list of {', '.join(SCOPES)}")
        queues = entry.get("queues")
        if queues is not None and (
            not isinstance(queues, list) or not queues or any(not isinstance(q, str) or not q for q in queues)
        ):
            raise ValueError(f"{where}.queues: must be a non-empty list of queue names or patterns")
        if sha.lower() in out:
            raise ValueError(f"{where}.sha256: the same token as {out[sha.lower()].name!r}")
        names.add(name)
        out[sha.lower()] = Principal(name, frozenset(scopes), tuple(queues) if queues is not None else None)
    return out


class Tokens:
    """Who each bearer token is: the shorthands, the cluster secret and the tokens file."""

    def __init__(self, auth_token: str, client_token: str, tokens_file: str = "", cluster_secret: str = "") -> None:
        self._fixed: dict[str, Principal] = {}
        if client_token:
            self._fixed[digest(client_token)] = Principal("client-token", frozenset({"enqueue", "consume", "read"}))
        if auth_token:
            self._fixed[digest(auth_token)] = Principal("auth-token", frozenset(SCOPES))
        secret = cluster_secret or auth_token
        self._node_digest = digest(secret) if secret else None
        if secret:
            self._fixed[digest(secret)] = Principal("node", frozenset(SCOPES), node=True)
        self._path = tokens_file
        self._file: dict[str, Principal] = parse_tokens_file(tokens_file) if tokens_file else {}
        self._stamp = self._stat()
        self._failed_stamp: tuple[int, int, int] | None = None
        #: Bumped whenever the set of valid tokens changes.
        self.generation = 0

    @property
    def enabled(self) -> bool:
        return bool(self._fixed or self._path)

    @property
    def node_secret_digest(self) -> str | None:
        return self._node_digest

    def _stat(self) -> tuple[int, int, int] | None:
        if not self._path:
            return None
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def who(self, token: str) -> Principal | None:
        d = digest(token)
        return self._fixed.get(d) or self._file.get(d)

    def valid(self, principal: Principal) -> bool:
        """Whether ``principal`` still holds (not removed or changed in the tokens file)."""
        return principal in self._fixed.values() or principal in self._file.values()

    def is_node(self, token: str) -> bool:
        return self._node_digest is not None and hmac.compare_digest(digest(token), self._node_digest)

    def reload(self) -> bool:
        """Re-read the tokens file if it changed; True when the valid tokens changed. A file
        that does not parse keeps the current tokens (logged once per version)."""
        stamp = self._stat()
        if not self._path or stamp == self._stamp:
            return False
        try:
            tokens = parse_tokens_file(self._path)
        except ValueError as exc:
            if stamp != self._failed_stamp:
                log.warning("auth: not reloading the tokens file (%s); the current tokens stay", exc)
                self._failed_stamp = stamp
            return False
        self._stamp, self._failed_stamp = stamp, None
        if tokens == self._file:
            return False
        removed = {p.name for p in self._file.values()} - {p.name for p in tokens.values()}
        self._file = tokens
        self.generation += 1
        log.info("auth: tokens file reloaded: %d token(s)%s", len(tokens),
                 f"; revoked or changed: {', '.join(sorted(removed))}" if removed else "")
        return True


def bearer(metadata: Any) -> str | None:
    """The bearer token in ``metadata`` (None when there is none)."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value if isinstance(value, str) else value.decode(errors="replace")
            return text.removeprefix("Bearer ").strip()
    return None


def _peer_host(peer: str) -> str:
    """``ipv4:1.2.3.4:5678`` / ``ipv6:[::1]:5678`` -> the address without the port."""
    _, _, rest = peer.partition(":")
    return rest.rpartition(":")[0] or peer


Ctx = grpc.aio.ServicerContext[Any, Any]
#: The queue of a job this node can read (None when it cannot find it).
JobQueue = Callable[[str], Awaitable[str | None]]


class Guard:
    """Checks every QueueService call against its token: authentication, the method's
    scope, the queues the request names; ends Lease streams whose token was revoked."""

    def __init__(self, tokens: Tokens, job_queue: JobQueue) -> None:
        self.tokens = tokens
        self._job_queue = job_queue
        self._fails: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._streams: dict[asyncio.Task[Any], Principal] = {}
        self._revoked: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ authentication

    def _limited(self, peer: str, now: float) -> bool:
        fails = self._fails.get(peer)
        if fails is None:
            return False
        while fails and fails[0] < now - FAIL_WINDOW_SECONDS:
            fails.popleft()
        return len(fails) >= FAIL_LIMIT

    def _failed(self, peer: str, now: float) -> None:
        fails = self._fails.pop(peer, None) or collections.deque()
        fails.append(now)
        self._fails[peer] = fails  # most recent last
        while len(self._fails) > FAIL_PEERS:
            self._fails.popitem(last=False)

    def principal(self, context: Ctx) -> Principal:
        """Who is calling; raises Unauthenticated."""
        peer = _peer_host(context.peer() or "")
        now = time.monotonic()
        if self._limited(peer, now):
            metrics.AUTH_FAILURES.labels("rate_limited").inc()
            raise Unauthenticated(
                "too many failed authentications from this address; retry later",
                reason="AUTH_RATE_LIMITED", retry_after=FAIL_WINDOW_SECONDS,
            )
        token = bearer(context.invocation_metadata())
        who = self.tokens.who(token) if token else None
        if who is None:
            self._failed(peer, now)
            metrics.AUTH_FAILURES.labels("missing" if not token else "unknown").inc()
            raise Unauthenticated("missing or unknown bearer token")
        return who

    # ------------------------------------------------------------------ authorization

    async def _check(self, method: str, request: Any, who: Principal) -> None:
        scope = METHOD_SCOPE[method]
        if scope not in who.scopes:
            raise PermissionDenied("", f"{method} needs the {scope!r} scope; token {who.name!r} lacks it")
        if who.queues is None:
            return
        if method in UNRESTRICTED_ONLY:
            limited = f"token {who.name!r} is limited to queues {list(who.queues)}"
            raise PermissionDenied("name", f"{limited}: {method} needs an unrestricted one")
        for field, queue in _queues_named(method, request):
            if not queue:
                raise PermissionDenied(field, f"token {who.name!r} is limited to queues {list(who.queues)}: name one")
            if not who.may_queue(queue):
                raise PermissionDenied(field, f"token {who.name!r} may not use queue {queue!r}")
        if method in ("CancelJob", "RetryJob"):
            held = await self._job_queue(request.job_id)
            if held is not None and not who.may_queue(held):
                raise NotFound(f"job {request.job_id} not found")

    def unary(self, method: str, fn: Callable[[Any, Ctx], Awaitable[Any]]) -> Callable[[Any, Ctx], Awaitable[Any]]:
        async def guarded(request: Any, context: Ctx) -> Any:
            who = self.principal(context)
            await self._check(method, request, who)
            response = await fn(request, context)
            if who.queues is not None:
                if method == "GetJob" and not who.may_queue(response.job.queue):
                    raise NotFound(f"job {request.job_id} not found")
                if method == "GetQueueStats" and not request.queues:
                    kept = [s for s in response.stats if who.may_queue(s.queue)]
                    del response.stats[:]
                    response.stats.extend(kept)
            return response

        return guarded

    def stream(
        self, method: str, fn: Callable[[Any, Ctx], AsyncIterator[Any]]
    ) -> Callable[[Any, Ctx], AsyncIterator[Any]]:
        async def guarded(request: Any, context: Ctx) -> AsyncIterator[Any]:
            who = self.principal(context)
            await self._check(method, request, who)
            task = asyncio.current_task()
            assert task is not None
            self._streams[task] = who
            try:
                async for message in fn(request, context):
                    yield message
            except asyncio.CancelledError:
                if task in self._revoked:
                    raise Unauthenticated(f"token {who.name!r} was revoked", reason="TOKEN_REVOKED") from None
                raise
            finally:
                self._streams.pop(task, None)
                self._revoked.discard(task)

        return guarded

    async def watch(self) -> None:
        """Reload the tokens file; end the streams of revoked tokens (runs until cancelled)."""
        while True:
            await asyncio.sleep(RELOAD_SECONDS)
            if self.tokens.reload():
                for task, who in list(self._streams.items()):
                    if not self.tokens.valid(who) and task not in self._revoked:
                        self._revoked.add(task)
                        task.cancel()


def _queues_named(method: str, request: Any) -> list[tuple[str, str]]:
    """(field, queue) of every queue a request names; an empty queue where a filter by
    queue is optional (a restricted token must name one)."""
    if method == "Enqueue":
        return [(f"jobs[{i}].queue", j.queue) for i, j in enumerate(request.jobs)]
    if method == "Lease":
        return [(f"queues[{i}]", q) for i, q in enumerate(request.queues)]
    if method in ("ListJobs", "PauseQueue", "ResumeQueue", "SetRateLimit", "SetGroupWeight", "ListGroups"):
        return [("queue", request.queue)]
    if method == "GetQueueStats":
        return [(f"queues[{i}]", q) for i, q in enumerate(request.queues)]
    if method in ("RetryJobs", "CancelJobs"):
        return [("selection.queue", request.selection.queue)]
    if method == "UpsertSchedule":
        return [("schedule.queue", request.schedule.queue)]
    return []


class NodeAuth(_Interceptor):
    """Node-to-node RPCs (``service``) need the cluster secret; refused at once otherwise,
    with a handler of the method's own kind (a client stream is not held open)."""

    def __init__(self, service: str, tokens: Tokens) -> None:
        self._prefix = f"/{service}/"
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if not details.method.startswith(self._prefix):
            return handler
        token = bearer(details.invocation_metadata)
        if token is None or not self._tokens.is_node(token):
            metrics.AUTH_FAILURES.labels("node").inc()
            return _deny(grpc.StatusCode.UNAUTHENTICATED, "node-to-node calls need the cluster secret", handler)
        return handler


def _deny(
    code: grpc.StatusCode, message: str, like: grpc.RpcMethodHandler[Any, Any] | None
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler that refuses at once, of the same kind as the method's own (``like``): a
    client-streaming call is refused before any message is read, not held open until its
    deadline waiting for one."""

    async def unary(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    async def stream(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    request_streaming = bool(like is not None and like.request_streaming)
    response_streaming = bool(like is not None and like.response_streaming)
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream)
    return grpc.unary_unary_rpc_method_handler(unary)


