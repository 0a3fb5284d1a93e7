"""A real LiteFS cluster on loopback for tests: N ``litefs mount`` processes (static lease,
node 1 the primary), each with its own FUSE dir, data dir, HTTP port and gRPC port, each
running ``edgeq serve`` on its mount through LiteFS ``exec``. Mounts and processes are always
cleaned up (``fusermount3 -uz``), even after a failed test.

Missing LiteFS, fusermount3 or /dev/fuse skips the cluster tests on a laptop, and FAILS them
when ``CI=true``: a cluster test that silently skips in CI is a failed test.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
DB = "edgeq.db"


def litefs_binary() -> str | None:
    candidates = (os.environ.get("EDGEQ_LITEFS_BIN"), str(ROOT / ".cache/litefs/bin/litefs"), shutil.which("litefs"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_litefs() -> str:
    """The LiteFS binary, or skip (laptop) / fail (CI) saying what is missing."""
    missing = []
    binary = litefs_binary()
    if binary is None:
        missing.append("the litefs binary (bash scripts/test builds it into .cache/litefs)")
    if shutil.which("fusermount3") is None:
        missing.append("fusermount3 (Debian package fuse3)")
    if not os.path.exists("/dev/fuse"):
        missing.append("/dev/fuse")
    if missing:
        message = "LiteFS cluster tests need " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI must run them)", pytrace=False)
        pytest.skip(message)
    assert binary is not None
    return binary


def consul_binary() -> str:
    """The Consul binary, or skip (laptop) / fail (CI)."""
    candidates = (os.environ.get("EDGEQ_CONSUL_BIN"), str(ROOT / ".cache/consul/bin/consul"), shutil.which("consul"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    message = "the Consul failover test needs consul (bash scripts/test builds it into .cache/consul)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI must run it)", pytrace=False)
    pytest.skip(message)


class ConsulAgent:
    """``consul agent -dev`` on loopback with free ports and ``session_ttl_min = 1s`` (so a
    LiteFS lease can use a 1 s TTL and fail over in seconds), stopped on exit."""

    def __init__(self, root: Path, address: str = "127.0.0.1", binary: str | None = None) -> None:
        """``address``: where every Consul port binds (the fault suite uses its bridge)."""
        self.binary = binary or consul_binary()
        self.address = address
        self.http_port = free_port()
        self.log = root / "consul.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.http_port}"

    def __enter__(self) -> ConsulAgent:
        cmd = [
            self.binary, "agent", "-dev", "-client", self.address, "-bind", self.address,
            "-http-port", str(self.http_port), "-serf-lan-port", str(free_port()),
            "-serf-wan-port", str(free_port()), "-server-port", str(free_port()),
            "-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1", "-log-level", "warn",
            "-hcl", 'session_ttl_min = "1s"',
        ]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + "/v1/status/leader", timeout=1) as r:
                    if r.read().strip() not in (b"", b'""'):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"consul did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=2) as r:
            return bytes(r.read())

    def put(self, path: str) -> bytes:
        req = urllib.request.Request(self.url + path, method="PUT", data=b"")
        with urllib.request.urlopen(req, timeout=2) as r:
            return bytes(r.read())

    def lease_session(self, key: str) -> str | None:
        """The Consul session holding the LiteFS lease ``key`` (None if nobody holds it)."""
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
            entries = json.loads(self.get(f"/v1/kv/{key}"))
            return str(entries[0]["Session"]) if entries and entries[0].get("Session") else None
        return None

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # consul exits 1 on SIGTERM; that is fine
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


#: Ports handed out by ``free_port`` in this process (never twice).
_GIVEN: set[int] = set()


def free_port() -> int:
    """A port for a process the test starts later. Taken below the kernel's ephemeral range
    (``ip_local_port_range``, 32768+ here) so that nothing binding port 0 or dialing out can
    grab it between this check and the process's own bind (the race of "bind 0, close,
    pass the number on"), never the same twice in one run, and free when checked."""
    low, _ = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(10000, max(10001, low))
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def txid_of(pos_file: Path) -> int:
    """The TXID in a LiteFS ``<db>-pos`` file ("<16 hex txid>/<16 hex checksum>"), 0 if absent."""
    try:
        text = pos_file.read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text.split("/")[0], 16) if text else 0


class Node:
    def __init__(self, cluster: Cluster, index: int) -> None:
        self.index = index
        self.dir = cluster.root / f"n{index}"
        self.mount = self.dir / "mnt"
        self.data = self.dir / "data"
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.cluster = cluster
        self.consul_candidate = True  # consul lease only
        self.extra_args: list[str] = []  # per-node `edgeq serve` flags; "{dir}" is this node's directory
        self.delay_seconds = 0.0  # LiteFS starts edgeq this long after it is ready
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "litefs.log"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def db(self) -> Path:
        return self.mount / DB

    def txid(self) -> int:
        return txid_of(self.mount / f"{DB}-pos")

    def stored_txid(self) -> int:
        """The highest TXID in this node's LiteFS data dir (readable while the node is down):
        LTX files are named ``<min TXID>-<max TXID>.ltx`` in hex."""
        names = (self.data / "dbs" / DB / "ltx").glob("*.ltx")
        return max((int(p.stem.split("-")[1], 16) for p in names), default=0)

    def _lease(self, primary: Node, candidate: bool) -> str:
        consul = self.cluster.consul
        if consul is None:
            # Static lease: every node names the primary (its gRPC address ends up in .primary).
            return (
                "lease:\n"
                '  type: "static"\n'
                f"  candidate: {'true' if candidate else 'false'}\n"
                f'  hostname: "{primary.target}"\n'
                f'  advertise-url: "http://127.0.0.1:{primary.http_port}"\n'
            )
        # Consul lease: each node names itself; the lock holder's hostname is the primary.
        return (
            "lease:\n"
            '  type: "consul"\n'
            f"  candidate: {'true' if self.consul_candidate else 'false'}\n"
            f'  hostname: "{self.target}"\n'
            f'  advertise-url: "http://127.0.0.1:{self.http_port}"\n'
            "  consul:\n"
            f'    url: "{consul.url}"\n'
            f'    key: "{self.cluster.consul_key}"\n'
            '    ttl: "1s"\n'
            '    lock-delay: "1s"\n'
        )

    def server_pid(self) -> int:
        """The pid of the edgeq server LiteFS runs (its exec child)."""
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[0])

    def write_config(self, primary: Node, args: list[str]) -> Path:
        self.mount.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        flags = " ".join(a.replace("{dir}", str(self.dir)) for a in [*args, *self.extra_args])
        cmd = (
            f"{sys.executable} -m edgeq_server serve --port {self.grpc_port} --litefs-mount {self.mount}"
            f" --litefs-db {DB} --litefs-http 127.0.0.1:{self.http_port} --log-level INFO {flags}"
        )
        if self.delay_seconds:
            cmd = f"sh -c 'sleep {self.delay_seconds}; exec {cmd}'"
        candidate = self is primary
        config = self.dir / "litefs.yml"
        config.write_text(
            f'fuse: {{ dir: "{self.mount}" }}\n'
            f'data: {{ dir: "{self.data}" }}\n'
            f'http: {{ addr: "127.0.0.1:{self.http_port}" }}\n'
            f"{self._lease(primary, candidate)}"
            f'exec: "{cmd}"\n'
        )
        return config


class Cluster:
    def __init__(
        self, root: Path, size: int = 3, *server_args: str, consul: ConsulAgent | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """``server_args`` are extra ``edgeq serve`` flags for every node ("{dir}" is replaced
        by the node's directory). With ``consul``, the nodes use a Consul lease (a fresh key
        per cluster) and node 1, started first, takes it; otherwise the static lease.
        ``credentials``: how the harness reaches nodes that serve TLS."""
        self.credentials = credentials
        self.binary = require_litefs()
        self.consul = consul
        self.consul_key = f"edgeq-test-{uuid.uuid4().hex[:12]}/primary"
        self.server_args = list(server_args)
        self.root = root
        self.nodes = [Node(self, i) for i in range(1, size + 1)]
        self.primary = self.nodes[0]  # the static lease's candidate

    @property
    def replicas(self) -> list[Node]:
        return [n for n in self.nodes if n is not self.primary]

    def __enter__(self) -> Cluster:
        try:
            for node in self.nodes:
                self.start(node)
            for node in self.replicas:
                self.wait_caught_up(node)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, node: Node, timeout: float = 60, wait: bool = True) -> None:
        config = node.write_config(self.primary, self.server_args)
        with node.log.open("ab") as log:
            node.proc = subprocess.Popen(
                [self.binary, "mount", "-config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # its own process group
            )
        if wait:
            self.wait_serving(node, timeout)

    def wait_serving(self, node: Node, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.channel(node) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                assert node.proc is not None
                if node.proc.poll() is not None:
                    raise RuntimeError(f"litefs node {node.index} exited:\n{node.log.read_text()[-3000:]}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {node.index} not serving:\n{node.log.read_text()[-3000:]}")
                time.sleep(0.1)

    def channel(self, node: Node) -> grpc.Channel:
        """A channel to ``node`` (TLS with ``credentials`` when given)."""
        if self.credentials is not None:
            return grpc.secure_channel(node.target, self.credentials)
        return grpc.insecure_channel(node.target)

    def wait_caught_up(self, node: Node, txid: int | None = None, timeout: float = 30) -> int:
        """Wait until ``node`` has applied ``txid`` (default: the primary's current TXID)."""
        want = self.primary.txid() if txid is None else txid
        deadline = time.monotonic() + timeout
        while node.txid() < want:
            if time.monotonic() > deadline:
                raise AssertionError(f"node {node.index} at txid {node.txid()}, wanted {want}")
            time.sleep(0.02)
        return node.txid()

    def promote(self, node: Node, others: list[Node]) -> None:
        """Manual failover with the static lease: restart ``node`` as the candidate, then
        restart ``others`` pointing at it (LiteFS reads the lease config only at start)."""
        self.primary = node
        self.stop(node)
        self.start(node)
        for other in others:
            self.stop(other)
            self.start(other)

    def kill9(self, node: Node) -> None:
        """kill -9 LiteFS and the edgeq server it runs, then clean the dead mount."""
        if node.proc is not None and node.proc.poll() is None:
            os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait(timeout=10)
        self._unmount(node)

    def stop(self, node: Node) -> None:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait(timeout=10)
        if node.proc is not None:
            try:  # the exec child, if anything is left of the group
                os.killpg(node.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._unmount(node)

    @staticmethod
    def _unmount(node: Node) -> None:
        subprocess.run(["fusermount3", "-uz", str(node.mount)], capture_output=True, check=False)

    def close(self) -> None:
        for node in reversed(self.nodes):
            self.stop(node)


# ------------------------------------------------------------------ calls the cluster tests share


def stub(target: str) -> tuple[grpc.Channel, pb_grpc.QueueServiceStub]:
    ch = grpc.insecure_channel(target)
    return ch, pb_grpc.QueueServiceStub(ch)


def info(node: Node) -> pb.GetNodeInfoResponse:
    ch, s = stub(node.target)
    with ch:
        return s.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=5)


def health(node: Node, service: str = "") -> int:
    with grpc.insecure_channel(node.target) as ch:
        check = health_pb2.HealthCheckRequest(service=service)
        return int(health_pb2_grpc.HealthStub(ch).Check(check, timeout=5).status)


def all_jobs(target: str, queue: str, min_txid: int = 0) -> list[pb.Job]:
    ch, s = stub(target)
    jobs: list[pb.Job] = []
    token = ""
    with ch:
        while True:
            resp = s.ListJobs(
                pb.ListJobsRequest(queue=queue, page_size=500, page_token=token, min_txid=min_txid), timeout=10
            )
            jobs.extend(resp.jobs)
            token = resp.next_page_token
            if not token:
                return jobs
