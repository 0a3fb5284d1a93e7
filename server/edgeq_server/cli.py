"""The ``edgeq`` command: ``serve`` runs a node; the other subcommands are a thin admin
client over the generated stubs, printing responses as JSON.

Every ``serve`` option is also an ``EDGEQ_<NAME>`` environment variable (flags win); the
client subcommands read ``EDGEQ_SERVER`` (default ``127.0.0.1:50051``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from edgeq import TLS, create_channel
from edgeq._config import PLAIN_SCHEME, TLS_SCHEME
from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc

from . import validate
from .app import EdgeqServer
from .config import Config
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
        p.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)
    p.add_argument("--db", dest="db_path", default=None, help="alias of --db-path")
    p.add_argument("--edge-log", dest="edge_log_path", default=None, help="alias of --edge-log-path")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeq", description="edgeq: a durable gRPC job queue")
    parser.add_argument(
        "--server", default=os.environ.get("EDGEQ_SERVER", "127.0.0.1:50051"),
        help="server address for client commands (env EDGEQ_SERVER)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of client calls, seconds")
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

    for name, helptext in (("cancel", "cancel a job"), ("retry", "retry a failed or cancelled job")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("job_id")
    for name, helptext in (("pause", "pause a queue"), ("resume", "resume a queue")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("queue")
    return parser


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


def _print(msg: Message) -> None:
    print(json_format.MessageToJson(msg, preserving_proto_field_name=True, indent=2))


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
    with _channel(args) as channel:
        stub: Any = _WithToken(pb_grpc.QueueServiceStub(channel), args.token)
        t = args.timeout
        cmd = args.command
        if cmd == "enqueue":
            payload = args.payload
            data = sys.stdin.buffer.read() if payload in (None, "-") else payload.encode()
            headers = dict(h.split("=", 1) for h in args.header)
            spec = pb.JobSpec(
                queue=args.queue, payload=data, priority=args.priority, max_attempts=args.max_attempts,
                idempotency_key=args.idempotency_key, headers=headers,
            )
            if args.delay is not None:
                spec.delay.FromNanoseconds(int(args.delay * 1e9))
            levels = {name: value for value, name in validate.DURABILITY_NAMES.items()}
            durability = levels[args.durability] if args.durability else pb.DURABILITY_UNSPECIFIED
            _print(stub.Enqueue(pb.EnqueueRequest(jobs=[spec], durability=durability), timeout=t))
        elif cmd == "jobs":
            state: Any = STATES["job_state_" + args.state] if args.state else 0
            remaining, token = args.limit, ""
            while remaining > 0:
                resp = stub.ListJobs(
                    pb.ListJobsRequest(queue=args.queue, state=state, page_size=min(remaining, 1000), page_token=token),
                    timeout=t,
                )
                for job in resp.jobs:
                    _print(job)
                remaining -= len(resp.jobs)
                token = resp.next_page_token
                if not token:
                    break
        elif cmd == "job":
            _print(stub.GetJob(pb.GetJobRequest(job_id=args.job_id), timeout=t))
        elif cmd == "stats":
            _print(stub.GetQueueStats(pb.GetQueueStatsRequest(queues=args.queues), timeout=t))
        elif cmd == "node":
            _print(stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=t))
        elif cmd == "cancel":
            _print(stub.CancelJob(pb.CancelJobRequest(job_id=args.job_id), timeout=t))
        elif cmd == "retry":
            _print(stub.RetryJob(pb.RetryJobRequest(job_id=args.job_id), timeout=t))
        elif cmd == "pause":
            _print(stub.PauseQueue(pb.PauseQueueRequest(queue=args.queue), timeout=t))
        elif cmd == "resume":
            _print(stub.ResumeQueue(pb.ResumeQueueRequest(queue=args.queue), timeout=t))
    return 0


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
        logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        asyncio.run(serve(config))
        return 0
    if args.command == "edge-log":
        return _edge_log(args.path)
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
