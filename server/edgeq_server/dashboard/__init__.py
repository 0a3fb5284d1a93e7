"""The web dashboard: what an operator sees and clicks, served by ``edgeq serve --http-port``.

Owns the HTTP side only. Every page and action is a call to this node's own QueueService
over a private Unix socket (``App`` adds it to the gRPC server; mode 0600 in a 0700
directory), made with the signed-in user's token, so the dashboard has exactly the gRPC
API's semantics: the same validation and error texts, the same scopes (pages need ``read``,
retry/cancel/pause need ``admin``), reads served locally and writes forwarded to the
primary on a replica. It owns no SQL and no queue logic.

- Stack: aiohttp in the server's event loop, Jinja2 templates rendered on the server
  (autoescaped), one stylesheet and one small script served from the package (no CDN, no
  build step; pages work with JavaScript off, the script only refreshes them every few
  seconds while nothing is selected or being typed).
- Sign-in (when the server has tokens): the user pastes a token once; it is checked
  (``Tokens.who``) and kept server-side under a random session id, sent back as an
  HttpOnly, SameSite=Strict cookie (Secure under TLS); the token itself never reaches the
  page again. Failed sign-ins from one address are limited like the gRPC port's.
- CSRF: every form carries the session's random token; a POST without it (or from another
  origin) is refused with 403 before anything runs. With auth off, a session is still made
  on the first page, for that token.
- TLS: with ``--tls-cert``/``--tls-key`` the port is HTTPS with the same files (re-read
  within a second of a change, for new connections; a half-written pair is not taken);
  with ``--tls-client-ca`` browsers must present a client certificate too.

Pages: queues (counts by state, oldest ready age, enqueue/complete rates from successive
samples, rate limit, paused), schedules (cron, zone, next and last tick; pause, resume,
delete), jobs (queue, state and id/key-prefix filters, paged), a job (payload and
result as pretty JSON, text or hex; headers, attempts, error, timeline), dead jobs (FAILED,
with retry/cancel one by one or selected in bulk), cluster (this node; on a replica the
primary's view too: replicas, lag, edge log and outbox).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import logging
import os
import secrets
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import grpc
import jinja2
from aiohttp import web
from google.protobuf import duration_pb2, timestamp_pb2

from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc

from ..auth import FAIL_LIMIT, FAIL_WINDOW_SECONDS, Tokens
from ..config import Config
from ..tls import ServerTLS

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
COOKIE = "edgeq_session"
#: A session lasts this long after sign-in.
SESSION_SECONDS = 12 * 3600
#: Deadline of the dashboard's calls to the node.
CALL_SECONDS = 10.0
#: Rows per jobs page; most jobs one bulk action takes.
PAGE_SIZE = 50
BULK_MAX = 500
#: How often the TLS files are checked for a rotation.
TLS_CHECK_SECONDS = 1.0
#: Queue samples kept for the rates, and the span a rate is taken over.
RATE_SPAN_SECONDS = 60.0
STATES = {
    "pending": pb.JOB_STATE_PENDING, "running": pb.JOB_STATE_RUNNING, "completed": pb.JOB_STATE_COMPLETED,
    "failed": pb.JOB_STATE_FAILED, "cancelled": pb.JOB_STATE_CANCELLED,
}
STATE_NAMES: dict[int, str] = {int(v): k for k, v in STATES.items()} | {int(pb.JOB_STATE_ACCEPTED): "accepted"}
ROLES = {
    pb.NODE_ROLE_PRIMARY: "primary", pb.NODE_ROLE_REPLICA: "replica", pb.NODE_ROLE_STANDALONE: "standalone",
    pb.NODE_ROLE_UNKNOWN: "unknown",
}


@dataclass
class Session:
    token: str  # the bearer token the calls carry ("" with auth off)
    who: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    expires: float = field(default_factory=lambda: time.monotonic() + SESSION_SECONDS)


#: The request's session (set by the security middleware on every page but /login and /static).
SESSION: web.RequestKey[Session] = web.RequestKey("edgeq_session", Session)


class Dashboard:
    """The HTTP server. ``start`` binds ``cfg.host:cfg.http_port``; ``socket`` is the Unix
    socket path the gRPC server must also listen on (``App`` adds it before starting)."""

    def __init__(
        self, cfg: Config, tokens: Tokens, tls: ServerTLS | None,
        primary_info: Callable[[tuple[tuple[str, str], ...]], Awaitable[pb.GetNodeInfoResponse | None]],
    ) -> None:
        self._cfg = cfg
        self._tokens = tokens
        self._tls = tls
        self._primary_info = primary_info
        self._dir = tempfile.mkdtemp(prefix="edgeq-dashboard-")  # 0700
        self.socket = os.path.join(self._dir, "grpc.sock")
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.QueueServiceStub | None = None
        self._sessions: dict[str, Session] = {}
        self._fails: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._samples: Samples = collections.deque()
        self._runner: web.AppRunner | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._ssl_stamp: tuple[tuple[int, int, int], ...] = ()
        self._watcher: asyncio.Task[None] | None = None
        self.port = 0
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined,
        )
        self._templates.filters.update(ts=_ts, dur=_dur, state=_state, age=_age)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(f"unix:{self.socket}")
        self._stub = pb_grpc.QueueServiceStub(self._channel)
        app = web.Application(middlewares=[self._security])
        app.add_routes([
            web.get("/", self._root),
            web.get("/login", self._login_page),
            web.post("/login", self._login),
            web.post("/logout", self._logout),
            web.get("/queues", self._queues),
            web.post("/queues/{queue}/{action:pause|resume}", self._pause),
            web.get("/jobs", self._jobs),
            web.get("/jobs/{id}", self._job),
            web.post("/jobs/{id}/{action:retry|cancel}", self._act),
            web.get("/dead", self._dead),
            web.post("/bulk", self._bulk),
            web.get("/cluster", self._cluster),
            web.get("/schedules", self._schedules),
            web.post("/schedules/{name}/{action:pause|resume|delete}", self._schedule_action),
            web.get("/groups", self._groups),
            web.post("/groups/{queue}/weight", self._group_weight),
            web.static("/static", HERE / "static"),
        ])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._cfg.host, max(self._cfg.http_port, 0), ssl_context=self._ssl())
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self._cfg.http_port
        if self._tls is not None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_tls(), name="dashboard-tls")
        log.info("dashboard on %s://%s:%d/", "https" if self._tls else "http", self._cfg.host, self.port)

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._channel is not None:
            await self._channel.close(None)
        with contextlib.suppress(OSError):
            os.unlink(self.socket)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)

    def _ssl(self) -> ssl.SSLContext | None:
        if self._tls is None:
            return None
        self._ssl_context = _tls_context(self._tls)
        self._ssl_stamp = self._tls.file_stamps()
        return self._ssl_context

    async def _watch_tls(self) -> None:
        """Follow a certificate rotation: new connections get the new files (checked every
        ``TLS_CHECK_SECONDS``; a half-written pair is not taken)."""
        assert self._tls is not None and self._ssl_context is not None
        while True:
            await asyncio.sleep(TLS_CHECK_SECONDS)
            stamp = self._tls.file_stamps()
            if stamp == self._ssl_stamp:
                continue
            try:
                _tls_context(self._tls)  # the pair must load on its own first
                self._ssl_context.load_cert_chain(self._tls.cert_path, self._tls.key_path)
                self._ssl_stamp = stamp
                log.info("dashboard TLS: certificate reloaded")
            except (ssl.SSLError, OSError) as exc:
                log.warning("dashboard TLS: keeping the current certificate (%s)", exc)

    # ------------------------------------------------------------------ sessions and safety

    def _session(self, request: web.Request) -> Session | None:
        sid = request.cookies.get(COOKIE, "")
        session = self._sessions.get(sid)
        if session is None:
            return None
        if session.expires < time.monotonic() or (session.token and self._tokens.who(session.token) is None):
            self._sessions.pop(sid, None)  # expired, or its token was revoked
            return None
        return session

    def _new_session(self, token: str, who: str) -> tuple[str, Session]:
        now = time.monotonic()
        for sid in [s for s, v in self._sessions.items() if v.expires < now]:
            del self._sessions[sid]
        sid = secrets.token_urlsafe(32)
        session = self._sessions[sid] = Session(token, who)
        return sid, session

    def _set_cookie(self, response: web.StreamResponse, sid: str) -> None:
        response.set_cookie(
            COOKIE, sid, httponly=True, samesite="Strict", secure=self._tls is not None, max_age=SESSION_SECONDS,
            path="/",
        )

    @web.middleware
    async def _security(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
        if request.path.startswith("/static/") or request.path == "/login":
            response = await handler(request)
        else:
            session = self._session(request)
            if session is None and self._tokens.enabled:
                if request.method != "GET":
                    raise web.HTTPForbidden(text="sign in first")
                raise web.HTTPFound("/login?" + urlencode({"next": request.path_qs}))
            if request.method == "POST":
                form = await request.post()
                origin = request.headers.get("Origin")
                if session is None or not hmac.compare_digest(str(form.get("csrf", "")), session.csrf) or (
                    origin is not None and origin != f"{request.scheme}://{request.host}"
                ):
                    raise web.HTTPForbidden(text="CSRF check failed: reload the page and try again")
            fresh = ""
            if session is None:  # auth off: a session all the same, for its CSRF token
                fresh, session = self._new_session("", "")
            request[SESSION] = session
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # redirects carry the cookie too
                if fresh:
                    self._set_cookie(exc, fresh)
                raise
            if fresh:
                self._set_cookie(response, fresh)
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def _limited(self, peer: str) -> bool:
        fails = self._fails[peer]
        while fails and fails[0] < time.monotonic() - FAIL_WINDOW_SECONDS:
            fails.popleft()
        return len(fails) >= FAIL_LIMIT

    # ------------------------------------------------------------------ calls to the node

    async def _call(self, request: web.Request, method: str, message: Any) -> Any:
        """Call this node's QueueService with the session's token; a gRPC error raises
        ``CallError`` with its code and text (shown on the page)."""
        assert self._stub is not None
        session = request.get(SESSION)
        metadata = (("authorization", f"Bearer {session.token}"),) if session and session.token else ()
        try:
            return await getattr(self._stub, method)(message, timeout=CALL_SECONDS, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise CallError(exc.code().name, exc.details() or "") from None

    def _render(self, request: web.Request, name: str, **context: Any) -> web.Response:
        session = request.get(SESSION)
        page = self._templates.get_template(name).render(
            csrf=session.csrf if session else "", who=session.who if session else "", auth=self._tokens.enabled,
            path=request.path, notice=request.query.get("notice", ""), error=request.query.get("error", ""),
            **context,
        )
        return web.Response(text=page, content_type="text/html")

    @staticmethod
    def _back(form: Any, fallback: str, **message: str) -> web.HTTPFound:
        """Redirect to the form's ``back`` path (a local one only) with a notice or an error."""
        back = str(form.get("back", "")) or fallback
        if not back.startswith("/") or back.startswith("//"):
            back = fallback
        base, _, query = back.partition("?")
        params = [p for p in query.split("&") if p and not p.startswith(("notice=", "error="))]
        params.append(urlencode(message))
        return web.HTTPFound(base + "?" + "&".join(params))

    # ------------------------------------------------------------------ pages

    async def _root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/queues")

    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        if not self._tokens.enabled:
            raise web.HTTPFound("/queues")
        return self._render(request, "login.html", next=_local(request.query.get("next", "/queues")), failed=False)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        peer = request.remote or "?"
        token = str(form.get("token", "")).strip()
        principal = None if self._limited(peer) else self._tokens.who(token) if token else None
        if principal is None or principal.node:
            self._fails[peer].append(time.monotonic())
            response = self._render(request, "login.html", next=_local(str(form.get("next", "/queues"))), failed=True)
            response.set_status(401)
            return response
        found = web.HTTPFound(_local(str(form.get("next", "/queues"))))
        self._set_cookie(found, self._new_session(token, principal.name)[0])
        log.info("dashboard: %s signed in from %s", principal.name, peer)
        raise found

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        self._sessions.pop(request.cookies.get(COOKIE, ""), None)
        found = web.HTTPFound("/login" if self._tokens.enabled else "/queues")
        found.del_cookie(COOKIE, path="/")
        raise found

    async def _queues(self, request: web.Request) -> web.StreamResponse:
        try:
            stats = (await self._call(request, "GetQueueStats", pb.GetQueueStatsRequest())).stats
        except CallError as exc:
            return self._render(request, "queues.html", stats=[], rates={}, failure=str(exc))
        return self._render(
            request, "queues.html", stats=stats, rates=rates(self._samples, stats, time.monotonic()), failure=""
        )

    async def _pause(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        queue, action = request.match_info["queue"], request.match_info["action"]
        message = pb.PauseQueueRequest(queue=queue) if action == "pause" else pb.ResumeQueueRequest(queue=queue)
        try:
            await self._call(request, "PauseQueue" if action == "pause" else "ResumeQueue", message)
        except CallError as exc:
            raise self._back(form, "/queues", error=str(exc)) from None
        raise self._back(form, "/queues", notice=f"queue {queue} {action}d")

    async def _jobs(self, request: web.Request, dead: bool = False) -> web.StreamResponse:
        q = request.query
        queue, search = q.get("queue", "").strip(), q.get("q", "").strip()
        state = "failed" if dead else q.get("state", "")
        listing = pb.ListJobsRequest(
            queue=queue, state=STATES.get(state, pb.JOB_STATE_UNSPECIFIED), page_size=PAGE_SIZE,
            page_token=q.get("page", ""), search=search,
        )
        jobs: list[Any] = []
        next_page, failure = "", ""
        try:
            if state and state not in STATES:
                raise CallError("INVALID_ARGUMENT", f"state: unknown state {state!r}")
            answer = await self._call(request, "ListJobs", listing)
            jobs, next_page = list(answer.jobs), answer.next_page_token
            if search and not jobs and not listing.page_token:
                with contextlib.suppress(CallError):  # an id the edge log holds (ACCEPTED)
                    jobs = [(await self._call(request, "GetJob", pb.GetJobRequest(job_id=search))).job]
        except CallError as exc:
            failure = str(exc)
        queues = []
        with contextlib.suppress(CallError):
            queues = [s.queue for s in (await self._call(request, "GetQueueStats", pb.GetQueueStatsRequest())).stats]
        more = urlencode({"queue": queue, "state": "" if dead else state, "q": search, "page": next_page})
        return self._render(
            request, "jobs.html", jobs=jobs, queue=queue, state=state, search=search, states=list(STATES),
            queues=queues, next_url=f"{request.path}?{more}" if next_page else "", failure=failure, dead=dead,
            back=request.path_qs,
        )

    async def _dead(self, request: web.Request) -> web.StreamResponse:
        return await self._jobs(request, dead=True)

    async def _job(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["id"]
        try:
            job = (await self._call(request, "GetJob", pb.GetJobRequest(job_id=job_id))).job
        except CallError as exc:
            response = self._render(request, "job.html", job=None, failure=str(exc), back=request.path_qs)
            response.set_status(404 if exc.code == "NOT_FOUND" else 400)
            return response
        return self._render(
            request, "job.html", job=job, payload=_show(job.payload), result=_show(job.result), failure="",
            back=request.path_qs,
        )

    async def _act(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        job_id, action = request.match_info["id"], request.match_info["action"]
        try:
            if action == "retry":
                await self._call(request, "RetryJob", pb.RetryJobRequest(job_id=job_id))
            else:
                await self._call(request, "CancelJob", pb.CancelJobRequest(job_id=job_id))
        except CallError as exc:
            raise self._back(form, f"/jobs/{job_id}", error=str(exc)) from None
        raise self._back(form, f"/jobs/{job_id}", notice=f"{action} {job_id}: done")

    async def _bulk(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        action = str(form.get("action", ""))
        ids = [str(v) for v in form.getall("id", [])]
        if action not in ("retry", "cancel"):
            raise self._back(form, "/dead", error=f"action: unknown action {action!r}")
        if not ids:
            raise self._back(form, "/dead", error="id: select at least one job")
        if len(ids) > BULK_MAX:
            raise self._back(form, "/dead", error=f"id: at most {BULK_MAX} jobs at a time")
        done, failed = 0, []
        for job_id in ids:
            try:
                if action == "retry":
                    await self._call(request, "RetryJob", pb.RetryJobRequest(job_id=job_id))
                else:
                    await self._call(request, "CancelJob", pb.CancelJobRequest(job_id=job_id))
                done += 1
            except CallError as exc:
                failed.append(f"{job_id}: {exc}")
        if failed:
            raise self._back(form, "/dead", error=f"{action}: {done} done, {len(failed)} failed ({failed[0]})")
        raise self._back(form, "/dead", notice=f"{action}: {done} job(s) done")

    async def _schedules(self, request: web.Request) -> web.StreamResponse:
        try:
            rows = list((await self._call(request, "ListSchedules", pb.ListSchedulesRequest())).schedules)
        except CallError as exc:
            return self._render(request, "schedules.html", schedules=[], failure=str(exc))
        return self._render(request, "schedules.html", schedules=rows, failure="")

    async def _schedule_action(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        name, action = request.match_info["name"], request.match_info["action"]
        method, message = {
            "pause": ("PauseSchedule", pb.PauseScheduleRequest(name=name)),
            "resume": ("ResumeSchedule", pb.ResumeScheduleRequest(name=name)),
            "delete": ("DeleteSchedule", pb.DeleteScheduleRequest(name=name)),
        }[action]
        try:
            await self._call(request, method, message)
        except CallError as exc:
            raise self._back(form, "/schedules", error=str(exc)) from None
        raise self._back(form, "/schedules", notice=f"schedule {name}: {action}d")

    async def _groups(self, request: web.Request) -> web.StreamResponse:
        queue = request.query.get("queue", "").strip()
        listing = pb.ListGroupsRequest(queue=queue, page_size=PAGE_SIZE, page_token=request.query.get("page", ""))
        groups: list[Any] = []
        next_page, failure = "", ""
        try:
            answer = await self._call(request, "ListGroups", listing)
            groups, next_page = list(answer.groups), answer.next_page_token
        except CallError as exc:
            failure = str(exc)
        more = urlencode({"queue": queue, "page": next_page})
        return self._render(
            request, "groups.html", queue=queue, groups=groups, failure=failure,
            next_url=f"/groups?{more}" if next_page else "", back=request.path_qs,
        )

    async def _group_weight(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        queue = request.match_info["queue"]
        group = str(form.get("group", ""))
        here = "/groups?" + urlencode({"queue": queue})
        try:
            weight = int(str(form.get("weight", "")))
        except ValueError:
            raise self._back(form, here, error="weight: a whole number from 1 to 1000") from None
        try:
            change = pb.SetGroupWeightRequest(queue=queue, group=group, weight=weight)
            await self._call(request, "SetGroupWeight", change)
        except CallError as exc:
            raise self._back(form, here, error=str(exc)) from None
        raise self._back(form, here, notice=f"group {group or '(default)'} of {queue}: weight {weight}")

    async def _cluster(self, request: web.Request) -> web.StreamResponse:
        try:
            info = await self._call(request, "GetNodeInfo", pb.GetNodeInfoRequest())
        except CallError as exc:
            return self._render(request, "cluster.html", info=None, primary=None, failure=str(exc), roles=ROLES)
        session = request.get(SESSION)
        metadata = (("authorization", f"Bearer {session.token}"),) if session and session.token else ()
        primary = await self._primary_info(metadata) if info.role == pb.NODE_ROLE_REPLICA else None
        return self._render(request, "cluster.html", info=info, primary=primary, failure="", roles=ROLES)


class CallError(Exception):
    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code


Samples = collections.deque[tuple[float, dict[str, tuple[int, int]]]]


def rates(samples: Samples, stats: Any, now: float) -> dict[str, tuple[float, float]]:
    """Add this GetQueueStats answer to ``samples`` (taken at ``now``, seconds) and return,
    per queue, (enqueued, completed) per minute since the oldest sample kept: samples older
    than ``RATE_SPAN_SECONDS`` are dropped while a newer one remains to measure from. Jobs
    enqueued = the growth of the queue's total across states (retention deletes only old
    finished jobs; a sweep in the window lowers the figure, never below 0). Nothing until
    two samples are a second apart."""
    sample = {
        s.queue: (s.pending + s.scheduled + s.running + s.completed + s.failed + s.cancelled, s.completed)
        for s in stats
    }
    samples.append((now, sample))
    while len(samples) > 2 and samples[1][0] <= now - RATE_SPAN_SECONDS:
        samples.popleft()
    then, old = samples[0]
    span = now - then
    if span < 1.0:
        return {}
    return {
        q: (max(0.0, (total - old[q][0]) * 60 / span), max(0.0, (done - old[q][1]) * 60 / span))
        for q, (total, done) in sample.items() if q in old
    }


def _tls_context(tls: ServerTLS) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.cert_path, tls.key_path)
    if tls.client_ca_path:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(tls.client_ca_path)
    return ctx


def _local(path: str) -> str:
    """``path`` if it is a path on this site, else the queues page (no open redirect)."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/queues"


def _show(data: bytes) -> tuple[str, str]:
    """(kind, text): pretty JSON when it decodes as JSON, text when UTF-8, else hex."""
    if not data:
        return "empty", ""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return "hex", data.hex(" ")
    try:
        return "json", json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return "text", text


def _ts(value: timestamp_pb2.Timestamp) -> str:
    if not value.seconds and not value.nanos:
        return ""
    return value.ToDatetime().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _dur(value: duration_pb2.Duration) -> str:
    seconds = value.ToNanoseconds() / 1e9
    return _age(seconds)


def _age(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _state(value: int) -> str:
    return STATE_NAMES.get(value, "unknown")

