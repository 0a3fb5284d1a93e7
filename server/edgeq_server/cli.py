"""The ``edgeq`` command: ``serve`` runs a node; the other subcommands are a thin admin
client over the generated stubs, printing answers as a table (on a terminal), JSON or
NDJSON (``--output``, see ``output.py``); ``health`` asks grpc.health.v1; ``completion``
prints a bash/zsh completion script (shtab).

Every flag is also an ``EDGEQ_<FLAG>`` environment variable (``--max-attempts`` is
``EDGEQ_MAX_ATTEMPTS``; flags win): ``serve``'s through ``Config``, the others here.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import faulthandler
import hashlib
import json
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from edgeq import TLS, create_channel
from edgeq._config import PLAIN_SCHEME, TLS_SCHEME
from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc

from . import __version__, logs, tracing, validate
from .app import EdgeqServer
from .config import Config
from .output import FORMATS, GROUP_COLUMNS, SCHEDULE_COLUMNS, STATS_COLUMNS, Printer, default_format
from .store import EdgeLogStore

STATES = {s.lower(): v for s, v in pb.JobState.items() if v}


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run a server node", description="Run an edgeq node.")
    for f in dataclasses.fields(Config):
        if f.name == "grpc_options":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default)
        help_text = f"(env {Config.env_name(f.name)}, default {f.default})"
        if kind is bool:  # --tracing / --no-tracing
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            p.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)
    p.add_argument("--db", dest="db_path", default=None, help="alias of --db-path")
    p.add_argument("--edge-log", dest="edge_log_path", default=None, help="alias of --edge-log-path")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeq", description="edgeq: a durable gRPC job queue")
    parser.add_argument("--version", action="version", version=f"edgeq {__version__}")
    parser.add_argument(
        "--server", default=os.environ.get("EDGEQ_SERVER", "127.0.0.1:50051"),
        help="server address for client commands (env EDGEQ_SERVER)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of client calls, seconds")
    parser.add_argument(
        "--output", "-o", choices=FORMATS, default=None,
        help="how answers print (env EDGEQ_OUTPUT; default: table on a terminal, else json)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("EDGEQ_TOKEN", ""),
        help="bearer token for servers with auth on (env EDGEQ_TOKEN)",
    )
    tls = parser.add_argument_group(
        "TLS of client commands",
        "a server address edgeqs://host:port, or any of these options, turns TLS on",
    )
    tls.add_argument("--tls-ca", dest="client_tls_ca", default=os.environ.get("EDGEQ_TLS_CA", ""),
                     help="PEM CA the server's certificate must chain to (env EDGEQ_TLS_CA; default: system roots)")
    tls.add_argument("--tls-cert", dest="client_tls_cert", default=os.environ.get("EDGEQ_TLS_CERT", ""),
                     help="PEM client certificate, for servers that require one (mTLS) (env EDGEQ_TLS_CERT)")
    tls.add_argument("--tls-key", dest="client_tls_key", default=os.environ.get("EDGEQ_TLS_KEY", ""),
                     help="PEM key of --tls-cert (env EDGEQ_TLS_KEY)")
    tls.add_argument("--tls-server-name", dest="client_tls_server_name",
                     default=os.environ.get("EDGEQ_TLS_SERVER_NAME", ""),
                     help="name to verify the server's certificate against (env EDGEQ_TLS_SERVER_NAME)")
    tls.add_argument("--insecure", action="store_true",
                     help="development only: trust whatever certificate the server presents (a self-signed one)")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)

    p = sub.add_parser("enqueue", help="enqueue one job")
    p.add_argument("queue")
    p.add_argument("payload", nargs="?", help="payload text; '-' or absent reads stdin")
    p.add_argument("--delay", type=float, help="seconds before the job may run")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--max-attempts", type=int, default=0)
    p.add_argument("--key", dest="idempotency_key", default="", help="idempotency key")
    p.add_argument("--header", action="append", default=[], metavar="K=V")
    p.add_argument("--group", default="", help="the job's fair group (a tenant); default: the default group")
    p.add_argument(
        "--durability", choices=sorted(validate.DURABILITY_NAMES.values()),
        help="when the server answers: edge (fsynced in the answering node's edge log), local (committed on"
        " the primary), replicated (and applied by its replicas); default: the server's",
    )

    p = sub.add_parser("jobs", help="list jobs")
    p.add_argument("--queue", default="")
    p.add_argument("--state", choices=sorted(s.removeprefix("job_state_") for s in STATES if s != "job_state_accepted"))
    p.add_argument("--limit", type=int, default=100)

    p = sub.add_parser("job", help="show one job")
    p.add_argument("job_id")

    p = sub.add_parser("stats", help="queue statistics")
    p.add_argument("queues", nargs="*")

    sub.add_parser("node", help="the answering node: role, primary, txid, replicas, edge log")
    p = sub.add_parser(
        "edge-log", help="inspect this node's edge log file: jobs waiting to drain, requests refused for good",
    )
    p.add_argument("path", nargs="?", default=os.environ.get("EDGEQ_EDGE_LOG_PATH", ""),
                   help="the edge log file (env EDGEQ_EDGE_LOG_PATH; default <litefs-mount>.edge-log.db)")
    p = sub.add_parser(
        "hash-token", help="print the SHA-256 a --tokens-file entry needs (the token is read from stdin)"
    )

    for name, helptext, states in (
        ("cancel", "cancel a job, or every job of a queue in a state", ("pending", "running")),
        ("retry", "retry a failed or cancelled job, or every one of a queue in a state", ("failed", "cancelled")),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("job_id", nargs="?", help="one job; or --queue (and --state) for all of them")
        p.add_argument("--queue", default="", help="every job of this queue in --state")
        p.add_argument("--state", choices=states, default=states[0], help=f"with --queue (default {states[0]})")
        p.add_argument("--created-after", type=_when, metavar="TIME",
                       help="with --queue: only jobs created at or after TIME (ISO 8601, or Unix seconds)")
        p.add_argument("--created-before", type=_when, metavar="TIME",
                       help="with --queue: only jobs created before TIME (ISO 8601, or Unix seconds)")
        p.add_argument("--yes", "-y", action="store_true", help="do not ask before acting on a whole queue")
    p = sub.add_parser("rate-limit", help="lease at most JOBS of QUEUE per --per seconds (0: no limit)")
    p.add_argument("queue")
    p.add_argument("jobs", type=int)
    p.add_argument("--per", type=float, default=1.0, help="the period in seconds (default 1)")
    p.add_argument("--key-header", default="", metavar="HEADER",
                   help="a limit per key instead: each value of this job header gets its own bucket")
    p = sub.add_parser("group-weight", help="set a fair group's share of QUEUE's leases (WEIGHT 1..1000)")
    p.add_argument("queue")
    p.add_argument("group", help="the group (JobSpec.group; \"\" is the default group)")
    p.add_argument("weight", type=int)
    p = sub.add_parser("groups", help="a queue's fair groups: weight, pending and running jobs")
    p.add_argument("queue")
    p = sub.add_parser("schedule", help="cron schedules: set, list, pause, resume, delete")
    what = p.add_subparsers(dest="schedule_command", required=True)
    s = what.add_parser("set", help="create or replace a schedule")
    s.add_argument("name")
    s.add_argument("--queue", required=True, help="where each tick's job goes")
    s.add_argument("--cron", required=True, help='cron expression, e.g. "*/5 * * * *" (6 fields: seconds last)')
    s.add_argument("--tz", default="UTC", help="IANA time zone the expression is read in (default UTC)")
    s.add_argument("--payload", default="", help="each job's payload (text)")
    s.add_argument("--header", action="append", default=[], metavar="K=V", help="a header of each job (repeatable)")
    s.add_argument("--priority", type=int, default=0)
    s.add_argument("--max-attempts", type=int, default=0)
    s.add_argument("--overlap", choices=("allow", "skip"), default="allow",
                   help="skip a tick while the previous tick's job is pending or running")
    s.add_argument("--missed", choices=("skip", "run-once"), default="skip",
                   help="ticks missed while no primary ran them: none, or one job for all")
    what.add_parser("list", help="every schedule with its next and last tick")
    for verb in ("pause", "resume", "delete"):
        what.add_parser(verb, help=f"{verb} a schedule").add_argument("name")
    for nested in what.choices.values():  # --output also after the subcommand: edgeq schedule list -o json
        nested.add_argument("--output", "-o", choices=FORMATS, default=argparse.SUPPRESS, help="as edgeq --output")
    p = sub.add_parser("health", help="the node's grpc.health.v1 status; exit code 0 only when SERVING")
    p.add_argument("--service", default="", help="the service to ask about (default: the whole server)")
    p = sub.add_parser("completion", help="print a shell completion script: eval \"$(edgeq completion bash)\"")
    p.add_argument("shell", choices=("bash", "zsh"))
    for name, client_cmd in sub.choices.items():  # --output also after the command: edgeq jobs -o table
        if name not in ("serve", "completion", "hash-token", "edge-log"):
            client_cmd.add_argument(
                "--output", "-o", choices=FORMATS, default=argparse.SUPPRESS, help="as edgeq --output"
            )
    _env_defaults(parser)
    for name, helptext in (("pause", "pause a queue"), ("resume", "resume a queue")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("queue")
    return parser


def _env_defaults(parser: argparse.ArgumentParser) -> None:
    """Every client flag also reads ``EDGEQ_<FLAG>`` (``--max-attempts``: EDGEQ_MAX_ATTEMPTS);
    ``serve``'s options read theirs through Config. A flag on the command line wins."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if name != "serve":
                    _env_defaults(sub)
            continue
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        env = "EDGEQ_" + longs[0][2:].upper().replace("-", "_")
        value = os.environ.get(env)
        if value is None:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            action.default = value.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(action, argparse._AppendAction):
            action.default = [v for v in value.split(",") if v]
        else:
            action.default = value  # argparse applies the flag's type to a string default


async def serve(config: Config) -> None:
    try:
        server = EdgeqServer(config)  # reads the TLS and tokens files
    except ValueError as exc:
        raise SystemExit(f"edgeq: {exc}") from None
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if server.tls is not None:
        loop.add_signal_handler(signal.SIGHUP, server.tls.reload)  # re-read the certificate files
    print(f"edgeq listening on {config.host}:{server.port}", flush=True)
    await stop.wait()
    await server.stop()


class _WithToken:
    """Wraps the stub so every call carries ``authorization: Bearer <token>``."""

    def __init__(self, stub: pb_grpc.QueueServiceStub, token: str) -> None:
        self._stub = stub
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        return lambda request, **kw: method(request, metadata=self._metadata, **kw)


def _channel(args: argparse.Namespace) -> grpc.Channel:
    """The channel of a client command: plaintext, or TLS as the flags and the address say."""
    wants_tls = bool(
        args.client_tls_ca or args.client_tls_cert or args.client_tls_key or args.client_tls_server_name
        or args.insecure
    )
    if not wants_tls:
        return create_channel(args.server)
    if args.server.startswith(PLAIN_SCHEME):
        raise SystemExit(f"edgeq: TLS options with a plaintext address {args.server}")
    address = args.server.removeprefix(TLS_SCHEME)
    ca: bytes | str | None = args.client_tls_ca or None
    if args.insecure:
        # Trust on first use: the certificate the server presents becomes the only root.
        host, _, port = address.rpartition(":")
        try:
            ca = ssl.get_server_certificate((host.strip("[]"), int(port)), timeout=args.timeout).encode()
        except (OSError, ValueError) as exc:
            raise SystemExit(f"edgeq: cannot fetch the certificate of {address}: {exc}") from None
    try:
        tls = TLS(ca=ca, cert=args.client_tls_cert or None, key=args.client_tls_key or None,
                  server_name=args.client_tls_server_name or None)
        return create_channel(address, tls=tls)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"edgeq: {exc}") from None


def _client(args: argparse.Namespace) -> int:
    out = Printer(args.output or default_format())
    with _channel(args) as channel:
        if args.command == "health":
            return _health(channel, args, out)
        stub: Any = _WithToken(pb_grpc.QueueServiceStub(channel), args.token)
        t = args.timeout
        cmd = args.command
        if cmd == "enqueue":
            payload = args.payload
            data = sys.stdin.buffer.read() if payload in (None, "-") else payload.encode()
            headers = dict(h.split("=", 1) for h in args.header)
            spec = pb.JobSpec(
                queue=args.queue, payload=data, priority=args.priority, max_attempts=args.max_attempts,
                idempotency_key=args.idempotency_key, headers=headers, group=args.group,
            )
            if args.delay is not None:
                spec.delay.FromNanoseconds(int(args.delay * 1e9))
            levels = {name: value for value, name in validate.DURABILITY_NAMES.items()}
            durability = levels[args.durability] if args.durability else pb.DURABILITY_UNSPECIFIED
            out.one(stub.Enqueue(pb.EnqueueRequest(jobs=[spec], durability=durability), timeout=t))
        elif cmd == "jobs":
            state: Any = STATES["job_state_" + args.state] if args.state else 0
            out.rows(_list_jobs(stub, args.queue, state, args.limit, t))
        elif cmd == "job":
            out.one(stub.GetJob(pb.GetJobRequest(job_id=args.job_id), timeout=t))
        elif cmd == "stats":
            resp = stub.GetQueueStats(pb.GetQueueStatsRequest(queues=args.queues), timeout=t)
            if out.fmt == "table":
                out.rows(resp.stats, STATS_COLUMNS)
            else:
                out.one(resp)
        elif cmd == "node":
            out.one(stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=t))
        elif cmd in ("cancel", "retry"):
            return _cancel_or_retry(stub, args, out)
        elif cmd == "schedule":
            return _schedule(stub, args, out)
        elif cmd == "rate-limit":
            request = pb.SetRateLimitRequest(queue=args.queue, jobs=args.jobs, key_header=args.key_header)
            if args.jobs:
                request.period.FromNanoseconds(int(args.per * 1e9))
            out.one(stub.SetRateLimit(request, timeout=t))
        elif cmd == "group-weight":
            weight = pb.SetGroupWeightRequest(queue=args.queue, group=args.group, weight=args.weight)
            out.one(stub.SetGroupWeight(weight, timeout=t))
        elif cmd == "groups":
            out.rows(_list_groups(stub, args.queue, t), GROUP_COLUMNS)
        elif cmd == "pause":
            out.one(stub.PauseQueue(pb.PauseQueueRequest(queue=args.queue), timeout=t))
        elif cmd == "resume":
            out.one(stub.ResumeQueue(pb.ResumeQueueRequest(queue=args.queue), timeout=t))
    return 0


def _list_jobs(stub: Any, queue: str, state: Any, limit: int, timeout: float) -> list[pb.Job]:
    jobs: list[pb.Job] = []
    token = ""
    while len(jobs) < limit:
        resp = stub.ListJobs(
            pb.ListJobsRequest(queue=queue, state=state, page_size=min(limit - len(jobs), 1000), page_token=token),
            timeout=timeout,
        )
        jobs.extend(resp.jobs)
        token = resp.next_page_token
        if not token:
            break
    return jobs


def _list_groups(stub: Any, queue: str, timeout: float) -> list[pb.Group]:
    groups: list[pb.Group] = []
    token = ""
    while True:
        resp = stub.ListGroups(pb.ListGroupsRequest(queue=queue, page_size=1000, page_token=token), timeout=timeout)
        groups.extend(resp.groups)
        token = resp.next_page_token
        if not token:
            return groups


def _cancel_or_retry(stub: Any, args: argparse.Namespace, out: Printer) -> int:
    """One job by id; or every job of ``--queue`` in ``--state`` (asks first unless --yes)."""
    def call(job_id: str) -> Message:
        if args.command == "cancel":
            return stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=args.timeout)  # type: ignore[no-any-return]
        return stub.RetryJob(pb.RetryJobRequest(job_id=job_id), timeout=args.timeout)  # type: ignore[no-any-return]

    if args.job_id:
        if args.queue:
            print(f"edgeq: {args.command}: give a job id or --queue, not both", file=sys.stderr)
            return 2
        out.one(call(args.job_id))
        return 0
    if not args.queue:
        print(f"edgeq: {args.command}: give a job id, or --queue (and --state) for a whole queue", file=sys.stderr)
        return 2
    verb = "cancel" if args.command == "cancel" else "retry"
    state = STATES["job_state_" + args.state]
    selection = pb.JobSelection(queue=args.queue, state=state)  # type: ignore[arg-type]  # an enum value
    ranged = args.created_after is not None or args.created_before is not None
    if args.created_after is not None:
        selection.created_after.CopyFrom(args.created_after)
    if args.created_before is not None:
        selection.created_before.CopyFrom(args.created_before)
    if not args.yes:
        (stats,) = stub.GetQueueStats(pb.GetQueueStatsRequest(queues=[args.queue]), timeout=args.timeout).stats
        now = {"pending": stats.pending + stats.scheduled, "running": stats.running, "failed": stats.failed,
               "cancelled": stats.cancelled}[args.state]
        what = f"the {args.state} jobs of queue {args.queue}" + (" created in the range given" if ranged else "")
        if now == 0:
            out.one({"queue": args.queue, "state": args.state, "matched": 0, _DONE[verb]: 0})
            return 0
        if not sys.stdin.isatty():
            print(f"edgeq: {verb} {what} ({now} {args.state} now)? Pass --yes to confirm.", file=sys.stderr)
            return 2
        answer = input(f"{verb} {what} ({now} {args.state} now)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing done", file=sys.stderr)
            return 1
    total, calls = 0, 0
    while True:  # bounded server-side batches (RetryJobs / CancelJobs), until none is left
        if verb == "cancel":
            resp = stub.CancelJobs(pb.CancelJobsRequest(selection=selection), timeout=args.timeout)
        else:
            resp = stub.RetryJobs(pb.RetryJobsRequest(selection=selection), timeout=args.timeout)
        total, calls = total + resp.count, calls + 1
        if not resp.more:
            break
    out.one({"queue": args.queue, "state": args.state, "matched": total, _DONE[verb]: total, "calls": calls})
    return 0


def _schedule(stub: Any, args: argparse.Namespace, out: Printer) -> int:
    t, verb = args.timeout, args.schedule_command
    if verb == "set":
        template = pb.JobSpec(payload=args.payload.encode(), priority=args.priority, max_attempts=args.max_attempts)
        template.headers.update(dict(h.split("=", 1) for h in args.header))
        sch = pb.Schedule(
            name=args.name, queue=args.queue, cron=args.cron, time_zone=args.tz, template=template,
            overlap=pb.OVERLAP_POLICY_SKIP if args.overlap == "skip" else pb.OVERLAP_POLICY_ALLOW,
            missed=pb.MISSED_TICKS_RUN_ONCE if args.missed == "run-once" else pb.MISSED_TICKS_SKIP,
        )
        out.one(stub.UpsertSchedule(pb.UpsertScheduleRequest(schedule=sch), timeout=t).schedule)
    elif verb == "list":
        out.rows(stub.ListSchedules(pb.ListSchedulesRequest(), timeout=t).schedules, SCHEDULE_COLUMNS)
    elif verb == "delete":
        out.one(stub.DeleteSchedule(pb.DeleteScheduleRequest(name=args.name), timeout=t))
    elif verb == "pause":
        out.one(stub.PauseSchedule(pb.PauseScheduleRequest(name=args.name), timeout=t).schedule)
    else:
        out.one(stub.ResumeSchedule(pb.ResumeScheduleRequest(name=args.name), timeout=t).schedule)
    return 0


#: The summary's key for each bulk verb.
_DONE = {"cancel": "cancelled", "retry": "retried"}


def _when(text: str) -> timestamp_pb2.Timestamp:
    """A --created-after/--created-before value: ISO 8601 (UTC when no zone) or Unix seconds."""
    try:
        moment = datetime.datetime.fromtimestamp(float(text), datetime.UTC)
    except ValueError:
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an ISO 8601 time or Unix seconds: {text!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment)
    return ts


def _health(channel: grpc.Channel, args: argparse.Namespace, out: Printer) -> int:
    """grpc.health.v1 Check: prints the status; exit 0 only when SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
    resp = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout, metadata=metadata
    )
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    if out.fmt == "table":
        print(status)
    else:
        out.one({"service": args.service, "status": status})
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1


def _edge_log(path: str) -> int:
    """Print an edge log's state as JSON (read-only; works beside a running server)."""
    if not path:
        print("edgeq: edge-log needs the file (or EDGEQ_EDGE_LOG_PATH)", file=sys.stderr)
        return 2
    if not os.path.exists(path):
        print(f"edgeq: {path}: no such edge log", file=sys.stderr)
        return 1
    log = EdgeLogStore.read_only(path)
    try:
        requests, jobs, size, dead, oldest = log.totals()
        refused = [
            {"seq": seq, "jobs": n, "created_at_us": created, "reason": reason}
            for seq, n, created, reason in log.dead_rows()
        ]
    finally:
        log.close()
    print(json.dumps({
        "path": path, "waiting_requests": requests, "waiting_jobs": jobs, "waiting_bytes": size,
        "oldest_created_at_us": oldest, "refused_requests": dead, "refused": refused,
    }, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        names = [f.name for f in dataclasses.fields(Config) if f.name != "grpc_options"]
        overrides = {name: getattr(args, name, None) for name in names}
        try:
            config = Config.from_env(**overrides)
        except ValueError as exc:
            print(f"edgeq: {exc}", file=sys.stderr)
            return 2
        logs.configure(config.log_level, config.log_format)
        # A native crash (SIGSEGV, SIGABRT, ...) or a fatal error leaves every thread's Python
        # stack on stderr, so a node that died from a signal says where.
        faulthandler.enable()
        if config.tracing:
            try:
                tracing.configure_exporter()
            except ValueError as exc:
                print(f"edgeq: {exc}", file=sys.stderr)
                return 2
        asyncio.run(serve(config))
        return 0
    if args.command == "edge-log":
        return _edge_log(args.path)
    if args.command == "completion":
        import shtab

        print(shtab.complete(build_parser(), shell=args.shell))
        return 0
    if args.command == "hash-token":
        token = sys.stdin.readline().strip()
        if not token:
            print("edgeq: hash-token reads the token from stdin (one line)", file=sys.stderr)
            return 2
        print(hashlib.sha256(token.encode()).hexdigest())
        return 0
    try:
        return _client(args)
    except grpc.RpcError as exc:
        print(f"edgeq: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
