"""Jepsen-style fault injection for an edgeq cluster: three real LiteFS nodes, each in its own
network namespace, one real Consul agent, producers and workers in this process, a seeded
schedule of faults, and a checker that compares what clients were told with what is stored.

Topology (all names and addresses are this module's own; nothing binds outside them)::

    root netns: bridge edgeqbr0  10.77.0.1/24  Consul (HTTP, serf, RPC) binds here
                                 10.77.0.2/32  source address of this process's clients
    netns edgeq1: veth 10.77.0.11  LiteFS http 0.0.0.0:20202, edgeq gRPC 10.77.0.11:50051
    netns edgeq2: veth 10.77.0.12  ...
    netns edgeq3: veth 10.77.0.13  ...

LiteFS runs under ``nsenter --net=/run/netns/edgeqN`` (so its FUSE mount stays visible in the
root mount namespace) and runs ``edgeq serve`` as its exec child; every node is a Consul lease
candidate (ttl 3s, lock-delay 1s, a fresh key per run).

Faults (``FAULTS``): kill -9 of the primary or of a replica (process group, ``fusermount3
-uz``, restart a few seconds later), SIGSTOP/SIGCONT of a node's process group for longer
than the Consul TTL, the primary's Consul session destroyed, a partition of one node (blackhole
routes inside its namespace to the other nodes and to Consul; clients, which come from
10.77.0.2, still reach it), and a LiteFS restart (SIGTERM, wait, start). A supervisor restarts
a node whose LiteFS exits by itself (as Fly.io restarts a Machine) and counts it.

The checker (``check``) reports lost enqueues, duplicate jobs, lost acks, stuck jobs, the
longest write outage, the longest worker starvation, failovers, and the outage per fault.
``run_chaos`` is the whole thing; ``tests/test_chaos.py`` and ``scripts/chaos`` call it.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the support package
from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc
from support.cluster_harness import DB, ROOT, ConsulAgent, litefs_binary

SUBNET = "10.77.0"
BRIDGE = "edgeqbr0"
BRIDGE_IP = f"{SUBNET}.1"  # Consul
CLIENT_IP = f"{SUBNET}.2"  # this process's clients (never blackholed)
NS_PREFIX = "edgeq"
GRPC_PORT = 50051
LITEFS_PORT = 20202
LOCK_FILE = "/run/edgeq-chaos.lock"
BOGUS_MAC = "02:00:00:00:de:ad"  # partition mode "drop": frames to this MAC reach no one
QUEUE = "chaos"
FENCE_QUEUE = "chaos-fence"

CONSUL_TTL = "3s"
CONSUL_LOCK_DELAY = "1s"

FAULTS = ("kill_primary", "kill_replica", "sigstop", "session_destroy", "partition", "litefs_restart")
#: Faults aimed at the edge log (``--durability edge``): kill -9 of a replica whose edge log
#: holds a backlog (the primary's edgeq SIGSTOPped meanwhile); kill -9 of the primary while
#: replicas drain a backlog into it; SIGSTOP of a replica's edgeq (the drainer) for longer
#: than its drain deadline while it drains; a stale candidate: kill -9 of a replica, then
#: of the primary while the replica is down, then the replica restarted at once (it cannot
#: catch up and may win the lease without the last writes: LiteFS elects the first to take
#: the lock), the old primary after it.
EDGE_FAULTS = ("kill_replica_with_backlog", "kill_primary_mid_drain", "sigstop_drainer", "stale_candidate")

CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.enable_retries", 0),
]


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


def consul_path() -> str | None:
    candidates = (os.environ.get("EDGEQ_CONSUL_BIN"), str(ROOT / ".cache/consul/bin/consul"), shutil.which("consul"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_requirements() -> list[str]:
    """What this machine lacks to run the chaos suite (empty: nothing)."""
    missing = []
    if litefs_binary() is None:
        missing.append("the litefs binary (bash scripts/test builds it into .cache/litefs)")
    if consul_path() is None:
        missing.append("consul (bash scripts/test builds it into .cache/consul)")
    for tool in ("fusermount3", "nsenter", "ip"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if not os.path.exists("/dev/fuse"):
        missing.append("/dev/fuse")
    if os.geteuid() != 0:
        missing.append("root (network namespaces)")
    elif shutil.which("ip") is not None:
        probe = f"{NS_PREFIX}probe{os.getpid()}"
        if run("ip", "netns", "add", probe, check=False).returncode != 0:
            missing.append("working network namespaces (ip netns add failed)")
        else:
            run("ip", "netns", "del", probe, check=False)
    return missing


# --------------------------------------------------------------------------------------------
# Network: bridge + one namespace per node


class Network:
    """The bridge, the namespaces and the veth pairs; ``close`` removes all of them (and kills
    anything still running inside a namespace). Holds ``LOCK_FILE`` so two runs never share
    the fixed names and subnet; leftovers of a crashed earlier run are removed first."""

    def __init__(self, size: int) -> None:
        self.names = [f"{NS_PREFIX}{i}" for i in range(1, size + 1)]
        self._lock: Any = None

    def ip(self, index: int) -> str:
        return f"{SUBNET}.1{index}"

    def __enter__(self) -> Network:
        self._lock = open(LOCK_FILE, "a+")  # held until close; lists the run's FUSE mounts
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise RuntimeError(f"another chaos run holds {LOCK_FILE}") from None
        try:
            # Leftovers of a run that could not clean up (killed with SIGKILL); we hold the lock.
            self._remove()
            self._lock.seek(0)
            for line in self._lock.read().splitlines():
                if line.strip():
                    run("fusermount3", "-uz", line.strip(), check=False)
            self._lock.seek(0)
            self._lock.truncate()
            run("ip", "link", "add", BRIDGE, "type", "bridge")
            run("ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", BRIDGE)
            run("ip", "addr", "add", f"{CLIENT_IP}/32", "dev", BRIDGE)
            run("ip", "link", "set", BRIDGE, "up")
            # Connections from this process to the nodes come from CLIENT_IP, which partitions
            # leave alone; Consul listens on BRIDGE_IP, which they cut.
            run("ip", "route", "replace", f"{SUBNET}.0/24", "dev", BRIDGE, "proto", "kernel", "scope", "link",
                "src", CLIENT_IP)
            for i, name in enumerate(self.names, start=1):
                host, peer = f"veq{i}h", f"veq{i}n"
                run("ip", "netns", "add", name)
                run("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
                run("ip", "link", "set", peer, "netns", name)
                run("ip", "link", "set", host, "master", BRIDGE)
                run("ip", "link", "set", host, "up")
                run("ip", "-n", name, "addr", "add", f"{self.ip(i)}/24", "dev", peer)
                run("ip", "-n", name, "link", "set", peer, "up")
                run("ip", "-n", name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register_mounts(self, mounts: list[Path]) -> None:
        """Remember this run's FUSE mounts in the lock file, for the next run to unmount should
        this process die without cleaning up."""
        if self._lock is not None:
            self._lock.write("".join(f"{m}\n" for m in mounts))
            self._lock.flush()

    def partition(self, index: int, others: list[int], mode: str = "blackhole") -> None:
        """Cut node ``index`` off from the other nodes and Consul (clients, from CLIENT_IP, still
        reach it).

        ``blackhole``: blackhole routes inside its namespace. Its own new connections then fail
        at once (EINVAL); established ones, and every connection from the other side, see
        silence. ``drop``: permanent neighbour entries with a MAC nobody has, inside its
        namespace for the other nodes and Consul, and inside the other nodes' namespaces for
        it: frames go to no one, so every connection, new or established, on both sides sees
        silence (a real network cut; tc classifiers and netfilter are not available here)."""
        name = self.names[index - 1]
        targets = [*(self.ip(o) for o in others), BRIDGE_IP]
        if mode == "blackhole":
            for dst in targets:
                run("ip", "-n", name, "route", "add", "blackhole", f"{dst}/32", check=False)
        elif mode == "drop":
            for dst in targets:
                run("ip", "-n", name, "neigh", "replace", dst, "lladdr", BOGUS_MAC, "dev", f"veq{index}n",
                    "nud", "permanent")
            for o in others:
                run("ip", "-n", self.names[o - 1], "neigh", "replace", self.ip(index), "lladdr", BOGUS_MAC,
                    "dev", f"veq{o}n", "nud", "permanent")
        else:
            raise ValueError(f"unknown partition mode {mode!r}")

    def heal(self, index: int) -> None:
        name = self.names[index - 1]
        out = run("ip", "-n", name, "route", "show", "type", "blackhole", check=False).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                run("ip", "-n", name, "route", "del", "blackhole", parts[1], check=False)
        for i, ns in enumerate(self.names, start=1):
            out = run("ip", "-n", ns, "neigh", "show", "dev", f"veq{i}n", check=False).stdout
            for line in out.splitlines():
                if BOGUS_MAC in line:
                    run("ip", "-n", ns, "neigh", "del", line.split()[0], "dev", f"veq{i}n", check=False)

    def _remove(self) -> None:
        existing = run("ip", "netns", "list", check=False).stdout
        for name in self.names:
            if any(line.split()[0] == name for line in existing.splitlines() if line.strip()):
                kill_netns_pids(name)
                run("ip", "netns", "del", name, check=False)
        for i in range(1, len(self.names) + 1):
            run("ip", "link", "del", f"veq{i}h", check=False)
        run("ip", "link", "del", BRIDGE, check=False)

    def close(self) -> None:
        try:
            self._remove()
        finally:
            if self._lock is not None:
                self._lock.seek(0)
                self._lock.truncate()
                self._lock.close()
                self._lock = None


def kill_netns_pids(name: str) -> None:
    """SIGKILL every process left in namespace ``name`` (all of them were started by us)."""
    for _ in range(3):
        out = run("ip", "netns", "pids", name, check=False).stdout.split()
        if not out:
            return
        for pid in out:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGCONT)
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# Consul


class Consul(ConsulAgent):
    """``cluster_harness.ConsulAgent`` bound to the bridge address."""

    def __init__(self, root: Path) -> None:
        binary = consul_path()
        if binary is None:
            raise RuntimeError("consul binary missing")
        super().__init__(root, BRIDGE_IP, binary)


# --------------------------------------------------------------------------------------------
# Nodes


class NetNode:
    def __init__(self, cluster: NetCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.ns = f"{NS_PREFIX}{index}"
        self.ip = f"{SUBNET}.1{index}"
        self.dir = cluster.root / f"n{index}"
        self.mount = self.dir / "mnt"
        self.data = self.dir / "data"
        self.log = self.dir / "litefs.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.expected_down = False  # set while a fault keeps it down on purpose
        self.stopped = False  # SIGSTOPped
        self.starts = 0

    @property
    def target(self) -> str:
        return f"{self.ip}:{GRPC_PORT}"

    @property
    def http(self) -> str:
        return f"http://{self.ip}:{LITEFS_PORT}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def write_config(self) -> Path:
        self.mount.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        c = self.cluster
        cmd = (
            f"{sys.executable} -m edgeq_server serve --host {self.ip} --port {GRPC_PORT}"
            f" --advertise-address {self.target} --litefs-mount {self.mount} --litefs-db {DB}"
            f" --litefs-http 127.0.0.1:{LITEFS_PORT} --log-level INFO"
            f" {' '.join(a.replace('{dir}', str(self.dir)) for a in c.server_args)}"
        )
        config = self.dir / "litefs.yml"
        config.write_text(
            f'fuse: {{ dir: "{self.mount}" }}\n'
            f'data: {{ dir: "{self.data}" }}\n'
            f'http: {{ addr: "0.0.0.0:{LITEFS_PORT}" }}\n'
            "lease:\n"
            '  type: "consul"\n'
            "  candidate: true\n"
            f'  hostname: "{self.target}"\n'
            f'  advertise-url: "{self.http}"\n'
            '  reconnect-delay: "500ms"\n'
            "  consul:\n"
            f'    url: "{c.consul.url}"\n'
            f'    key: "{c.consul_key}"\n'
            f'    ttl: "{CONSUL_TTL}"\n'
            f'    lock-delay: "{CONSUL_LOCK_DELAY}"\n'
            f'exec: "{cmd}"\n'
        )
        return config

    def start(self) -> None:
        config = self.write_config()
        self.unmount()
        with self.log.open("ab") as out:
            out.write(f"\n===== chaos: start #{self.starts + 1} at {time.strftime('%H:%M:%S')} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.ns}", self.cluster.litefs, "mount", "-config", str(config)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,  # its own process group
                env={k: v for k, v in os.environ.items() if not k.startswith(("FLY_", "LITEFS_"))},
            )
        self.starts += 1
        self.stopped = False

    def server_pid(self) -> int | None:
        """The edgeq server LiteFS runs (its exec child)."""
        if self.proc is None:
            return None
        out = run("pgrep", "-P", str(self.proc.pid), check=False).stdout.split()
        return int(out[0]) if out else None

    def signal_server(self, sig: int) -> None:
        pid = self.server_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def signal_group(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill9(self) -> None:
        if self.proc is not None:
            self.signal_group(signal.SIGCONT)
            self.signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        self.stopped = False
        self.unmount()

    def terminate(self, timeout: float = 20) -> None:
        """SIGTERM to LiteFS only (it forwards it to edgeq and unmounts), then make sure."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self.kill9()  # whatever is left of the group

    def unmount(self) -> None:
        run("fusermount3", "-uz", str(self.mount), check=False)

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""


class NetCluster:
    """Consul + ``size`` LiteFS/edgeq nodes in their namespaces; ``close`` leaves nothing."""

    def __init__(self, root: Path, size: int = 3, server_args: tuple[str, ...] = ()) -> None:
        litefs = litefs_binary()
        if litefs is None:
            raise RuntimeError("litefs binary missing")
        self.litefs = litefs
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.server_args = list(server_args)
        self.consul_key = f"edgeq-chaos-{uuid.uuid4().hex[:12]}/primary"
        self.network = Network(size)
        self.consul = Consul(root)
        self.nodes = [NetNode(self, i) for i in range(1, size + 1)]
        self._stack = contextlib.ExitStack()
        self.lock = threading.RLock()  # fault injection vs. supervisor
        self.unexpected_exits: list[dict[str, Any]] = []
        self._supervise = threading.Event()
        self._supervisor: threading.Thread | None = None

    def __enter__(self) -> NetCluster:
        try:
            self._stack.enter_context(self.network)
            self.network.register_mounts([n.mount for n in self.nodes])
            self._stack.callback(self._kill_all)  # runs before the network goes away
            self._stack.enter_context(self.consul)
            self.nodes[0].start()  # node 1 first: it creates the database and takes the lease
            self.wait_serving(self.nodes[0], 90)
            for node in self.nodes[1:]:
                node.start()
            for node in self.nodes[1:]:
                self.wait_serving(node, 90)
            self._supervisor = threading.Thread(target=self._supervise_loop, name="chaos-supervisor", daemon=True)
            self._supervisor.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._supervise.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=10)
        self._stack.close()

    def _kill_all(self) -> None:
        for node in self.nodes:
            node.expected_down = True
            node.kill9()
        for name in self.network.names:
            kill_netns_pids(name)
        for node in self.nodes:
            node.unmount()

    def _supervise_loop(self) -> None:
        """Restart a node whose LiteFS exited without a fault asking for it (Fly.io would)."""
        while not self._supervise.wait(0.5):
            with self.lock:
                for node in self.nodes:
                    if node.expected_down or node.proc is None or node.proc.poll() is None:
                        continue
                    rc = node.proc.returncode
                    tail = node.tail(600)
                    self.unexpected_exits.append(
                        {"node": node.index, "rc": rc, "t": time.monotonic(), "log_tail": tail[-600:]}
                    )
                    log(f"node {node.index} exited by itself (rc {rc}); restarting")
                    node.kill9()
                    time.sleep(1)
                    node.start()

    def wait_serving(self, node: NetNode, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not node.alive():
                raise RuntimeError(f"litefs node {node.index} exited:\n{node.tail()}")
            if node_info(node.target, 1) is not None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {node.index} not serving:\n{node.tail()}")
            time.sleep(0.2)

    def litefs_info(self, node: NetNode, timeout: float = 1) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(node.http + "/info", timeout=timeout) as r:
                data = json.loads(r.read())
                return data if isinstance(data, dict) else None
        return None

    def primaries(self, timeout: float = 1) -> list[NetNode]:
        """Nodes whose edgeq says it is the primary right now (asked in parallel)."""
        roles: dict[int, int] = {}

        def ask(node: NetNode) -> None:
            info = node_info(node.target, timeout)
            if info is not None:
                roles[node.index] = info.role

        threads = [threading.Thread(target=ask, args=(n,)) for n in self.nodes if n.alive() and not n.stopped]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [n for n in self.nodes if roles.get(n.index) == pb.NODE_ROLE_PRIMARY]

    def healthy(self) -> bool:
        """Every node up and answering, exactly one primary, every replica naming it."""
        infos = []
        for node in self.nodes:
            if not node.alive() or node.stopped:
                return False
            info = node_info(node.target, 1)
            if info is None:
                return False
            infos.append(info)
        primaries = [i for i in infos if i.role == pb.NODE_ROLE_PRIMARY]
        if len(primaries) != 1:
            return False
        return all(i.primary == primaries[0].address and i.primary_reachable
                   for i in infos if i.role == pb.NODE_ROLE_REPLICA)


# --------------------------------------------------------------------------------------------
# gRPC helpers


_channels: dict[str, grpc.Channel] = {}
_channels_lock = threading.Lock()


def stub_for(target: str) -> pb_grpc.QueueServiceStub:
    """A shared channel per node (gRPC channels are thread-safe and reconnect by themselves)."""
    with _channels_lock:
        ch = _channels.get(target)
        if ch is None:
            ch = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
            _channels[target] = ch
        return pb_grpc.QueueServiceStub(ch)


def close_channels() -> None:
    with _channels_lock:
        for ch in _channels.values():
            ch.close()
        _channels.clear()


def node_info(target: str, timeout: float) -> pb.GetNodeInfoResponse | None:
    try:
        return stub_for(target).GetNodeInfo(pb.GetNodeInfoRequest(), timeout=timeout)
    except grpc.RpcError:
        return None


# --------------------------------------------------------------------------------------------
# Load: producers and workers


@dataclass
class History:
    """Everything clients observed, with ``time.monotonic()`` times."""

    t0: float = field(default_factory=time.monotonic)
    acked: dict[str, tuple[str, float]] = field(default_factory=dict)  # key -> (job_id, t)
    enqueue_attempts: int = 0
    enqueue_errors: dict[str, int] = field(default_factory=dict)
    acks_ok: list[tuple[str, float]] = field(default_factory=list)  # (job_id, t)
    ack_outcomes: dict[str, int] = field(default_factory=dict)
    deliveries: list[tuple[str, float, int]] = field(default_factory=list)  # (job_id, t, worker)
    worker_last_job: dict[int, float] = field(default_factory=dict)
    stream_ends: dict[str, int] = field(default_factory=dict)
    max_txid: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, bucket: dict[str, int], what: str) -> None:
        with self.lock:
            bucket[what] = bucket.get(what, 0) + 1

    def txid(self, txid: int) -> None:
        with self.lock:
            self.max_txid = max(self.max_txid, txid)


class Load:
    """Producer and worker threads against random nodes, recording into ``history``."""

    def __init__(self, targets: list[str], seed: int, producers: int = 4, workers: int = 3,
                 produce_interval: float = 0.05, lease_seconds: float = 10, stream_idle_seconds: float = 6,
                 edge: bool = False) -> None:
        self.targets = targets
        self.edge = edge  # --durability edge: every Enqueue is accepted at the edge
        self.seed = seed
        self.history = History()
        self.n_producers = producers
        self.n_workers = workers
        self.produce_interval = produce_interval
        self.lease_seconds = lease_seconds
        self.stream_idle_seconds = stream_idle_seconds  # no message for this long: the stream is dead
        self.stop_producing = threading.Event()
        self.stop_working = threading.Event()
        self._threads: list[threading.Thread] = []
        self._calls: dict[int, tuple[Any, float]] = {}  # worker -> (Lease call, last message time)
        self._calls_lock = threading.Lock()

    def start(self) -> None:
        for i in range(self.n_producers):
            self._threads.append(threading.Thread(target=self._produce, args=(i,), name=f"producer-{i}", daemon=True))
        for i in range(self.n_workers):
            self._threads.append(threading.Thread(target=self._work, args=(i,), name=f"worker-{i}", daemon=True))
        self._threads.append(threading.Thread(target=self._watchdog, name="stream-watchdog", daemon=True))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self.stop_producing.set()
        self.stop_working.set()
        with self._calls_lock:
            for call, _ in self._calls.values():
                call.cancel()
        for t in self._threads:
            t.join(timeout=15)

    def _produce(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        h = self.history
        n = 0
        while not self.stop_producing.is_set():
            key = f"p{index}-{n}"
            payload = key.encode()
            while True:  # the same key until acknowledged
                target = rng.choice(self.targets)
                with h.lock:
                    h.enqueue_attempts += 1
                try:
                    resp = stub_for(target).Enqueue(
                        pb.EnqueueRequest(jobs=[pb.JobSpec(queue=QUEUE, payload=payload, idempotency_key=key)]),
                        timeout=2,
                    )
                except grpc.RpcError as exc:
                    h.error(h.enqueue_errors, str(exc.code().name if exc.code() else "?"))
                    if self.stop_producing.is_set() and self.stop_working.is_set():
                        return
                    time.sleep(rng.uniform(0.05, 0.2))
                    continue
                now = time.monotonic()
                result = resp.results[0]
                if resp.buffered and not self.edge:  # the outbox is off in this suite; count it if it happens
                    h.error(h.enqueue_errors, "BUFFERED")
                with h.lock:
                    h.acked[key] = (result.job_id, now)
                    h.max_txid = max(h.max_txid, resp.txid)
                break
            n += 1
            time.sleep(self.produce_interval * rng.uniform(0.5, 1.5))

    def _work(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + 500 + index)
        h = self.history
        lease = pb.LeaseRequest(queues=[QUEUE], worker_id=f"chaos-worker-{index}", max_in_flight=8)
        lease.lease_duration.FromSeconds(int(self.lease_seconds))
        while not self.stop_working.is_set():
            target = rng.choice(self.targets)
            stub = stub_for(target)
            call: Any = stub.Lease(lease)
            with self._calls_lock:
                self._calls[index] = (call, time.monotonic())
            try:
                for resp in call:
                    now = time.monotonic()
                    with self._calls_lock:
                        self._calls[index] = (call, now)
                    if not resp.jobs:
                        continue
                    with h.lock:
                        for leased in resp.jobs:
                            h.deliveries.append((leased.job.id, now, index))
                        h.worker_last_job[index] = now
                    items = [pb.AckItem(lease_token=j.lease_token) for j in resp.jobs]
                    try:
                        ack = stub.Ack(pb.AckRequest(items=items), timeout=3)
                    except grpc.RpcError as exc:
                        h.error(h.ack_outcomes, f"RPC_{exc.code().name if exc.code() else '?'}")
                        continue
                    done = time.monotonic()
                    with h.lock:
                        h.max_txid = max(h.max_txid, ack.txid)
                        for leased, outcome in zip(resp.jobs, ack.outcomes, strict=False):
                            name = pb.LeaseOutcome.Name(outcome)
                            h.ack_outcomes[name] = h.ack_outcomes.get(name, 0) + 1
                            if outcome == pb.LEASE_OUTCOME_OK:
                                h.acks_ok.append((leased.job.id, done))
                h.error(h.stream_ends, "END")
            except grpc.RpcError as exc:
                h.error(h.stream_ends, str(exc.code().name if exc.code() else "?"))
            finally:
                with self._calls_lock:
                    self._calls.pop(index, None)
                call.cancel()
            if not self.stop_working.is_set():
                time.sleep(rng.uniform(0.05, 0.3))

    def _watchdog(self) -> None:
        """Cancel Lease streams silent for longer than ``stream_idle_seconds`` (a hung node sends
        neither jobs nor keepalives), so the worker reconnects elsewhere."""
        while not self.stop_working.wait(0.5):
            now = time.monotonic()
            with self._calls_lock:
                stale = [(i, call) for i, (call, last) in self._calls.items() if now - last > self.stream_idle_seconds]
            for i, call in stale:
                self.history.error(self.history.stream_ends, "WATCHDOG")
                call.cancel()
                with self._calls_lock:
                    self._calls.pop(i, None)


# --------------------------------------------------------------------------------------------
# Primary monitor


class PrimaryMonitor:
    """Samples every node's role (GetNodeInfo) and LiteFS ``/info`` every ``period`` seconds:
    the sequence of primaries (failovers) and moments when two nodes claim the primary role."""

    def __init__(self, cluster: NetCluster, period: float = 0.5) -> None:
        self.cluster = cluster
        self.period = period
        self.samples: list[tuple[float, list[int], list[int]]] = []  # (t, edgeq primaries, litefs primaries)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="primary-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            edgeq: dict[int, bool] = {}
            litefs: dict[int, bool] = {}

            def ask(node: NetNode, edgeq: dict[int, bool] = edgeq, litefs: dict[int, bool] = litefs) -> None:
                info = node_info(node.target, 0.4)
                if info is not None:
                    edgeq[node.index] = info.role == pb.NODE_ROLE_PRIMARY
                li = self.cluster.litefs_info(node, 0.4)
                if li is not None:
                    litefs[node.index] = bool(li.get("isPrimary"))

            threads = [threading.Thread(target=ask, args=(n,)) for n in self.cluster.nodes]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.samples.append((time.monotonic(), sorted(i for i, p in edgeq.items() if p),
                                 sorted(i for i, p in litefs.items() if p)))

    def failovers(self) -> int:
        changes, last = 0, None
        for _, primaries, litefs in self.samples:
            current = litefs[0] if len(litefs) == 1 else (primaries[0] if len(primaries) == 1 else None)
            if current is None:
                continue
            if last is not None and current != last:
                changes += 1
            last = current
        return changes

    def split_brain(self, t0: float) -> dict[str, Any]:
        """Samples (and merged intervals, seconds since ``t0``) in which more than one node said
        it was the primary: edgeq's GetNodeInfo role, and LiteFS's own /info isPrimary."""
        intervals: list[dict[str, Any]] = []
        for t, primaries, litefs in self.samples:
            if len(primaries) < 2 and len(litefs) < 2:
                continue
            last = intervals[-1] if intervals else None
            if last is not None and t - last["_t"] <= self.period * 3:
                last["to_s"] = round(t - t0, 1)
                last["_t"] = t
                last["edgeq"] = sorted(set(last["edgeq"]) | set(primaries))
                last["litefs"] = sorted(set(last["litefs"]) | set(litefs))
            else:
                intervals.append({"from_s": round(t - t0, 1), "to_s": round(t - t0, 1), "_t": t,
                                  "edgeq": primaries, "litefs": litefs})
        for i in intervals:
            i.pop("_t")
        return {
            "samples_two_edgeq_primaries": sum(1 for _, p, _ in self.samples if len(p) > 1),
            "samples_two_litefs_primaries": sum(1 for _, _, li in self.samples if len(li) > 1),
            "sample_period_s": self.period,
            "intervals": intervals,
        }

    def two_primaries_seconds(self, start: float, end: float) -> float:
        """Roughly how long (sample count x period) two nodes claimed the primary in [start, end)."""
        return sum(self.period for t, p, li in self.samples if start <= t < end and (len(p) > 1 or len(li) > 1))

    def current(self) -> int | None:
        for _, primaries, litefs in reversed(self.samples):
            if len(litefs) == 1:
                return litefs[0]
            if len(primaries) == 1:
                return primaries[0]
        return None


# --------------------------------------------------------------------------------------------
# Faults


@dataclass
class FaultRecord:
    kind: str
    node: int | None
    was_primary: bool
    t_inject: float
    t_heal: float = 0.0
    t_recovered: float | None = None
    primary_before: int | None = None
    primary_after: int | None = None
    note: str = ""


class Nemesis:
    """Injects one fault at a time and heals it; ``records`` keeps what happened when."""

    def __init__(self, cluster: NetCluster, rng: random.Random, stop_seconds: float = 8,
                 partition_seconds: float = 10, down_seconds: tuple[float, float] = (3, 6),
                 primary_bias: float = 0.7, partition_mode: str = "blackhole") -> None:
        self.cluster = cluster
        self.partition_mode = partition_mode
        self.primary_bias = primary_bias  # chance that a SIGSTOP/partition/restart hits the primary
        self.rng = rng
        self.stop_seconds = stop_seconds
        self.partition_seconds = partition_seconds
        self.down_seconds = down_seconds
        self.records: list[FaultRecord] = []

    def find_primary(self, timeout: float = 30) -> NetNode | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            primaries = self.cluster.primaries()
            if len(primaries) == 1:
                return primaries[0]
            time.sleep(0.3)
        return None

    def _target(self, kind: str, primary: NetNode | None) -> NetNode:
        nodes = self.cluster.nodes
        if kind in ("kill_primary", "session_destroy", "kill_primary_mid_drain") and primary is not None:
            return primary
        if kind in ("kill_replica", "kill_replica_with_backlog", "sigstop_drainer", "stale_candidate"):
            replicas = [n for n in nodes if n is not primary]
            return self.rng.choice(replicas)
        if primary is not None and self.rng.random() < self.primary_bias:  # the interesting one
            return primary
        return self.rng.choice(nodes)

    def inject(self, kind: str) -> FaultRecord:
        c = self.cluster
        primary = self.find_primary()
        node = self._target(kind, primary)
        rec = FaultRecord(kind, node.index, node is primary, time.monotonic(),
                          primary_before=primary.index if primary else None)
        self.records.append(rec)
        log(f"fault {len(self.records)}: {kind} on node {node.index} ({'primary' if node is primary else 'replica'})")
        if kind in ("kill_primary", "kill_replica"):
            with c.lock:
                node.expected_down = True
                node.kill9()
            time.sleep(self.rng.uniform(*self.down_seconds))
            with c.lock:
                node.start()
                node.expected_down = False
        elif kind == "litefs_restart":
            with c.lock:
                node.expected_down = True
            node.terminate()
            time.sleep(self.rng.uniform(1, 3))
            with c.lock:
                node.start()
                node.expected_down = False
        elif kind == "sigstop":
            with c.lock:
                node.expected_down = True
                node.stopped = True
                node.signal_group(signal.SIGSTOP)
            time.sleep(self.stop_seconds)
            with c.lock:
                node.signal_group(signal.SIGCONT)
                node.stopped = False
                node.expected_down = False
        elif kind == "session_destroy":
            session = c.consul.lease_session(c.consul_key)
            if session is None:
                rec.note = "no session held"
            else:
                try:
                    c.consul.put(f"/v1/session/destroy/{session}")
                    rec.note = f"destroyed session {session}"
                except OSError as exc:
                    rec.note = f"destroy failed: {exc}"
        elif kind in EDGE_FAULTS:
            self._edge_fault(kind, rec, primary)
        elif kind == "partition":
            others = [n.index for n in c.nodes if n is not node]
            c.network.partition(node.index, others, self.partition_mode)
            rec.note = f"mode {self.partition_mode}"
            time.sleep(self.partition_seconds)
            c.network.heal(node.index)
        else:
            raise ValueError(kind)
        rec.t_heal = time.monotonic()
        return rec

    def _backlog(self, primary: NetNode, seconds: float) -> None:
        """SIGSTOP the primary's edgeq for ``seconds``: replicas keep accepting at the edge
        and build a backlog in their edge logs."""
        with self.cluster.lock:
            primary.signal_server(signal.SIGSTOP)
        time.sleep(seconds)

    def _edge_fault(self, kind: str, rec: FaultRecord, primary: NetNode | None) -> None:
        c = self.cluster
        node = c.nodes[rec.node - 1]
        if kind == "sigstop_drainer":  # the drainer's in-flight calls pass their deadline
            with c.lock:
                node.expected_down = True
                node.signal_server(signal.SIGSTOP)
            time.sleep(self.stop_seconds)
            with c.lock:
                node.signal_server(signal.SIGCONT)
                node.expected_down = False
            return
        if primary is None:
            rec.note = "no primary: skipped"
            return
        if kind == "stale_candidate":
            with c.lock:
                node.expected_down = True
                node.kill9()
            time.sleep(self.rng.uniform(*self.down_seconds))  # writes go on without it
            with c.lock:
                primary.expected_down = True
                primary.kill9()
                node.start()  # nothing to catch up from: it may take the lease stale
                node.expected_down = False
            time.sleep(self.rng.uniform(*self.down_seconds))
            with c.lock:
                primary.start()
                primary.expected_down = False
            return
        try:
            self._backlog(primary, 3.0)
            depth = {n.index: (node_info(n.target, 1) or pb.GetNodeInfoResponse()).edge_log_jobs for n in c.nodes}
            rec.note = f"edge-log backlog {depth}"
            if kind == "kill_replica_with_backlog":
                with c.lock:
                    node.expected_down = True
                    node.kill9()
        finally:
            with c.lock:
                primary.signal_server(signal.SIGCONT)
        if kind == "kill_primary_mid_drain":
            time.sleep(self.rng.uniform(0.02, 0.2))  # the replicas are draining into it now
            with c.lock:
                node.expected_down = True
                node.kill9()
        time.sleep(self.rng.uniform(*self.down_seconds))
        with c.lock:
            node.start()
            node.expected_down = False

    def settle(self, timeout: float = 60) -> None:
        """Wait until the cluster is healthy again, then 2 s more if it was not."""
        deadline = time.monotonic() + timeout
        waited = False
        while not self.cluster.healthy() and time.monotonic() < deadline:
            waited = True
            time.sleep(0.5)
        if waited:
            log("cluster settled after a node restart; next fault in 2 s")
            time.sleep(2)

    def recover(self, rec: FaultRecord, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.cluster.healthy():
                rec.t_recovered = time.monotonic()
                primary = self.cluster.primaries()
                rec.primary_after = primary[0].index if len(primary) == 1 else None
                return
            time.sleep(0.5)
        rec.note = (rec.note + "; " if rec.note else "") + f"not healthy {timeout:.0f}s after healing"
        log(f"cluster not healthy {timeout:.0f}s after healing {rec.kind}")


def edge_schedule(rng: random.Random) -> list[str]:
    """The edge test's schedule: each edge fault twice, a plain primary kill and a SIGSTOP of
    the primary, in a seeded random order."""
    kinds = [*EDGE_FAULTS, *EDGE_FAULTS, "kill_primary", "sigstop"]
    rng.shuffle(kinds)
    return kinds


def short_schedule(rng: random.Random) -> list[str]:
    """The test's schedule: 4 primary kills, a SIGSTOP, a partition, 3 session destroys (cheap,
    and the fault most likely to catch a write acknowledged while the primary is demoted), a
    replica kill and a LiteFS restart, in a seeded random order."""
    kinds = ["kill_primary"] * 4 + ["session_destroy"] * 3 + ["sigstop", "partition", "kill_replica", "litefs_restart"]
    rng.shuffle(kinds)
    return kinds


def long_schedule(rng: random.Random, kinds: tuple[str, ...] = FAULTS) -> Iterator[str]:
    """Endless seeded random faults (of ``kinds``), every kind first once, then weighted."""
    first = list(kinds)
    rng.shuffle(first)
    yield from first
    weights = {"kill_primary": 3, "kill_replica": 1, "sigstop": 2, "session_destroy": 2, "partition": 2,
               "litefs_restart": 1, "kill_replica_with_backlog": 2, "kill_primary_mid_drain": 2, "sigstop_drainer": 1,
               "stale_candidate": 1}
    weights = {k: w for k, w in weights.items() if k in kinds}
    while True:
        yield rng.choices(list(weights), weights=list(weights.values()))[0]


# --------------------------------------------------------------------------------------------
# Checker


def read_all(target: str, queue: str, min_txid: int, timeout: float = 15) -> list[pb.Job]:
    stub = stub_for(target)
    jobs: list[pb.Job] = []
    token = ""
    while True:
        resp = stub.ListJobs(
            pb.ListJobsRequest(queue=queue, page_size=1000, page_token=token, min_txid=min_txid), timeout=timeout
        )
        jobs.extend(resp.jobs)
        token = resp.next_page_token
        if not token:
            return jobs


def longest_gap(times: list[float], start: float, end: float) -> float:
    points = [start, *sorted(t for t in times if start <= t <= end), end]
    return max((b - a for a, b in itertools.pairwise(points)), default=0.0)


def starvation(history: History, end: float) -> float:
    """Longest interval in which some acknowledged job was waiting (acknowledged to its producer,
    not yet delivered to any worker) and no worker received any job."""
    first_delivery: dict[str, float] = {}
    for job_id, t, _ in history.deliveries:
        first_delivery.setdefault(job_id, t)
    intervals = sorted(
        (t_ack, first_delivery.get(job_id, end)) for job_id, t_ack in history.acked.values()
        if first_delivery.get(job_id, end) > t_ack
    )
    receives = sorted(t for _, t, _ in history.deliveries)
    worst = 0.0
    i = 0
    seg_start: float | None = None
    seg_end = 0.0
    merged: list[tuple[float, float]] = []
    for a, b in intervals:
        if seg_start is None or a > seg_end:
            if seg_start is not None:
                merged.append((seg_start, seg_end))
            seg_start, seg_end = a, b
        else:
            seg_end = max(seg_end, b)
    if seg_start is not None:
        merged.append((seg_start, seg_end))
    for a, b in merged:
        while i < len(receives) and receives[i] < a:
            i += 1
        points = [a]
        j = i
        while j < len(receives) and receives[j] <= b:
            points.append(receives[j])
            j += 1
        points.append(b)
        worst = max(worst, *(y - x for x, y in itertools.pairwise(points)))
    return worst


def ref_target(cluster: NetCluster, index: int | None) -> str:
    return cluster.nodes[(index or 1) - 1].target


def resolves(target: str, job_id: str) -> str | None:
    """The id GetJob answers for ``job_id`` (another one when the primary recorded it as an
    alias: the same key accepted at two edges)."""
    try:
        return str(stub_for(target).GetJob(pb.GetJobRequest(job_id=job_id), timeout=5).job.id)
    except grpc.RpcError:
        return None


def check(cluster: NetCluster, load: Load, monitor: PrimaryMonitor, faults: list[FaultRecord],
          t_load_start: float, t_load_end: float) -> dict[str, Any]:
    h = load.history
    primaries = cluster.primaries(2)
    primary = primaries[0] if len(primaries) == 1 else None
    report: dict[str, Any] = {}
    # Edge logs first: what the nodes accepted at the edge must have reached the primary.
    deadline = time.monotonic() + 60
    while True:
        infos = [node_info(n.target, 2) for n in cluster.nodes]
        waiting = {n.index: i.edge_log_jobs if i else None for n, i in zip(cluster.nodes, infos, strict=True)}
        if all(w == 0 for w in waiting.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    report["edge_log_jobs_left"] = waiting
    report["edge_log_dead"] = sum(i.outbox_dead for i in infos if i)
    # A fresh write fences the read: every node must have applied it.
    fence_txid = 0
    for _ in range(60):
        with contextlib.suppress(grpc.RpcError):
            target = (primary or cluster.nodes[0]).target
            resp = stub_for(target).Enqueue(  # stored on the primary, whatever the server's default
                pb.EnqueueRequest(jobs=[pb.JobSpec(queue=FENCE_QUEUE, payload=b"fence")],
                                  durability=pb.DURABILITY_LOCAL), timeout=5)
            fence_txid = resp.txid
            break
        time.sleep(1)
    report["fence_txid"] = fence_txid
    report["highest_txid_seen"] = h.max_txid
    report["txid_went_backwards"] = fence_txid < h.max_txid
    per_node: dict[int, list[pb.Job] | None] = {}
    errors: dict[int, str] = {}
    for node in cluster.nodes:
        jobs = None
        for min_txid in (max(fence_txid, h.max_txid), fence_txid):
            try:
                jobs = read_all(node.target, QUEUE, min_txid)
                break
            except grpc.RpcError as exc:
                errors[node.index] = f"min_txid={min_txid}: {exc.code()} {exc.details()}"
        per_node[node.index] = jobs
    ref_index = primary.index if primary else next((i for i, j in per_node.items() if j is not None), None)
    ref = per_node.get(ref_index) if ref_index is not None else None
    if ref is None:
        report["error"] = f"could not read any node: {errors}"
        return report
    by_key: dict[str, list[pb.Job]] = {}
    by_id: dict[str, pb.Job] = {}
    for job in ref:
        by_key.setdefault(job.idempotency_key, []).append(job)
        by_id[job.id] = job
    lost = sorted(k for k in h.acked if k not in by_key)
    dups = sorted(k for k, js in by_key.items() if len(js) > 1)
    mismatched = sorted(
        k for k, (jid, _) in h.acked.items()
        if jid and k in by_key and jid not in {j.id for j in by_key[k]}
        and resolves(ref_target(cluster, ref_index), jid) not in {j.id for j in by_key[k]}
    )
    ok_ids = {jid for jid, _ in h.acks_ok}

    def completed(jid: str) -> bool:
        """The acked job is COMPLETED — under its own id, or under the id it is an alias of:
        a producer that timed out at one edge and retried the key at another leaves two
        edge ids for one job, and after a rollback (a stale candidate won the lease) the
        edge logs' re-offers may store it under the other id, run it again and complete it."""
        job = by_id.get(jid)
        if job is None:
            other = resolves(ref_target(cluster, ref_index), jid)
            job = by_id.get(other) if other is not None else None
        return job is not None and job.state == pb.JOB_STATE_COMPLETED

    lost_acks = sorted(jid for jid in ok_ids if not completed(jid))
    stuck = sorted(j.id for j in ref if j.state in (pb.JOB_STATE_PENDING, pb.JOB_STATE_RUNNING))
    states: dict[str, int] = {}
    for j in ref:
        name = pb.JobState.Name(j.state)
        states[name] = states.get(name, 0) + 1
    ok_counts: dict[str, int] = {}
    for jid, _ in h.acks_ok:
        ok_counts[jid] = ok_counts.get(jid, 0) + 1
    delivered: dict[str, int] = {}
    for jid, _, _ in h.deliveries:
        delivered[jid] = delivered.get(jid, 0) + 1
    divergence: dict[str, Any] = {}
    ref_states = {j.id: j.state for j in ref}
    for idx, jobs in per_node.items():
        if idx == ref_index:
            continue
        if jobs is None:
            divergence[str(idx)] = f"unreadable: {errors.get(idx)}"
            continue
        theirs = {j.id: j.state for j in jobs}
        diff = sum(1 for jid in ref_states.keys() | theirs.keys() if ref_states.get(jid) != theirs.get(jid))
        divergence[str(idx)] = diff
    enqueue_times = [t for _, t in h.acked.values()]
    per_fault: list[dict[str, Any]] = []
    for i, f in enumerate(faults):
        window_end = faults[i + 1].t_inject if i + 1 < len(faults) else t_load_end
        after = [t for t in enqueue_times if t > f.t_inject]
        per_fault.append({
            "kind": f.kind,
            "node": f.node,
            "was_primary": f.was_primary,
            "at_s": round(f.t_inject - t_load_start, 1),
            "fault_lasted_s": round(f.t_heal - f.t_inject, 1),
            "outage_s": round(min(after) - f.t_inject, 2) if after else None,
            "max_enqueue_gap_s": round(longest_gap(enqueue_times, f.t_inject, window_end), 2),
            "two_primaries_s": round(monitor.two_primaries_seconds(f.t_inject, window_end), 1),
            "recovered_after_heal_s": round(f.t_recovered - f.t_heal, 1) if f.t_recovered else None,
            "primary_before": f.primary_before,
            "primary_after": f.primary_after,
            "note": f.note,
        })
    by_kind: dict[str, dict[str, Any]] = {}
    for pf in per_fault:
        entry = by_kind.setdefault(pf["kind"], {"count": 0, "max_outage_s": 0.0, "max_enqueue_gap_s": 0.0})
        entry["count"] += 1
        outage = pf["outage_s"] if pf["outage_s"] is not None else pf["max_enqueue_gap_s"]
        entry["max_outage_s"] = max(entry["max_outage_s"], outage)
        entry["max_enqueue_gap_s"] = max(entry["max_enqueue_gap_s"], pf["max_enqueue_gap_s"])
    report.update({
        "edge_log_not_drained": sum(w or 0 for w in waiting.values()),
        "lost_enqueues": len(lost),
        "dup_jobs": len(dups),
        "lost_acks": len(lost_acks),
        "stuck": len(stuck),
        "acked_job_id_mismatch": len(mismatched),
        "max_outage_s": round(longest_gap(enqueue_times, t_load_start, t_load_end), 2),
        "max_worker_starvation_s": round(starvation(h, t_load_end), 2),
        "failovers": monitor.failovers(),
        "split_brain": monitor.split_brain(t_load_start),
        "unexpected_node_exits": [{"node": e["node"], "rc": e["rc"], "at_s": round(e["t"] - t_load_start, 1)}
                                  for e in cluster.unexpected_exits],
        "outage_by_fault": by_kind,
        "faults": per_fault,
        "jobs_checked": len(ref),
        "checked_on_node": ref_index,
        "primary_at_check": primary.index if primary else None,
        "job_states": states,
        "acknowledged_enqueues": len(h.acked),
        "enqueue_attempts": h.enqueue_attempts,
        "enqueue_errors": h.enqueue_errors,
        "acks_ok": len(h.acks_ok),
        "ack_outcomes": h.ack_outcomes,
        "jobs_acked_ok_twice": sum(1 for c in ok_counts.values() if c > 1),
        "jobs_delivered_more_than_once": sum(1 for c in delivered.values() if c > 1),
        "stream_ends": h.stream_ends,
        "worker_last_job_at_s": {str(w): round(t - t_load_start, 1) for w, t in sorted(h.worker_last_job.items())},
        "replica_divergence": divergence,
        "read_errors": {str(k): v for k, v in errors.items()},
        "duration_s": round(t_load_end - t_load_start, 1),
        "examples": {"lost_enqueues": lost[:10], "dup_jobs": dups[:10], "lost_acks": lost_acks[:10],
                     "stuck": stuck[:10], "acked_job_id_mismatch": mismatched[:10]},
    })
    return report


# --------------------------------------------------------------------------------------------
# The whole run


def server_args(durability: str = "replicated", outbox: bool = False) -> tuple[str, ...]:
    """``edgeq serve`` flags for every node ("{dir}" is the node's directory)."""
    args = ["--durability", durability, "--durability-timeout-seconds", "2",
            "--drain-seconds", "1", "--grace-seconds", "1", "--keepalive-seconds", "2"]
    if outbox:
        args += ["--outbox-path", "{dir}/outbox.db"]
    return tuple(args)


SERVER_ARGS = server_args()


def run_chaos(root: Path, seed: int, schedule: list[str] | None = None, minutes: float | None = None,
              recovery_seconds: tuple[float, float] = (2, 4), quiet_seconds: float = 25,
              server_args: tuple[str, ...] = SERVER_ARGS, primary_bias: float = 0.7,
              stop_seconds: float = 8, partition_seconds: float = 10, kinds_allowed: tuple[str, ...] = FAULTS,
              partition_mode: str = "blackhole",
              on_fault: Callable[[FaultRecord], None] | None = None) -> dict[str, Any]:
    """Start the cluster and the load, inject ``schedule`` (or random faults for ``minutes``),
    heal, stop producers, let workers drain for ``quiet_seconds``, check, tear everything down."""
    rng = random.Random(seed)
    kinds: Iterator[str] = iter(schedule) if schedule is not None else long_schedule(rng, kinds_allowed)
    deadline = time.monotonic() + minutes * 60 if minutes is not None else None
    version = code_version()  # nodes restarted later run whatever is on disk then
    try:
        with NetCluster(root, 3, server_args) as cluster:
            log(f"cluster up (consul key {cluster.consul_key}); seed {seed}")
            load = Load([n.target for n in cluster.nodes], seed, edge="edge" in server_args)
            monitor = PrimaryMonitor(cluster)
            nemesis = Nemesis(cluster, rng, primary_bias=primary_bias, stop_seconds=stop_seconds,
                              partition_seconds=partition_seconds, partition_mode=partition_mode)
            monitor.start()
            load.start()
            t_start = time.monotonic()
            t_end: float | None = None
            try:
                time.sleep(5)  # steady state first
                for kind in kinds:
                    if deadline is not None and time.monotonic() > deadline:
                        break
                    rec = nemesis.inject(kind)
                    nemesis.recover(rec)
                    if on_fault is not None:
                        on_fault(rec)
                    time.sleep(rng.uniform(*recovery_seconds))
                    # A node that exited by itself meanwhile (LiteFS exits 99 when it loses
                    # the lease mid-commit) is back before the next fault: faults are one at
                    # a time. (Two of three nodes away at once stops replicated writes by
                    # design; that is not the outage this suite measures.)
                    nemesis.settle()
                time.sleep(3)
                load.stop_producing.set()
                t_end = time.monotonic()
                log(f"faults done ({len(nemesis.records)}); quiet period {quiet_seconds}s with workers running")
                time.sleep(quiet_seconds)
            finally:
                load.stop()
                monitor.stop()
            if t_end is None:
                t_end = time.monotonic()
            report = check(cluster, load, monitor, nemesis.records, t_start, t_end)
            save_history(root / "history.json", load.history, t_start)
            report["seed"] = seed
            report["code"] = version if version == code_version() else f"{version} -> {code_version()}"
            report["server_args"] = list(server_args)
            report["consul"] = {"ttl": CONSUL_TTL, "lock_delay": CONSUL_LOCK_DELAY}
            return report
    finally:
        close_channels()


def code_version() -> str:
    """The commit the servers ran (plus "+dirty" when server/ had local changes)."""
    head = run("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD", check=False).stdout.strip()
    dirty = run("git", "-C", str(ROOT), "status", "--porcelain", "--", "server", check=False).stdout.strip()
    return head + ("+dirty" if dirty else "")


def save_history(path: Path, h: History, t0: float) -> None:
    """What the clients saw (seconds since the load started), for post-mortems."""
    with h.lock:
        data = {
            "acked": {k: [jid, round(t - t0, 3)] for k, (jid, t) in h.acked.items()},
            "acks_ok": [[jid, round(t - t0, 3)] for jid, t in h.acks_ok],
            "deliveries": [[jid, round(t - t0, 3), w] for jid, t, w in h.deliveries],
        }
    path.write_text(json.dumps(data))


def leftovers(root: Path) -> list[str]:
    """Anything of ours still around: namespaces, the bridge, FUSE mounts under ``root``."""
    found = []
    ns = run("ip", "netns", "list", check=False).stdout
    found += [f"netns {line.split()[0]}" for line in ns.splitlines() if line.startswith(NS_PREFIX)]
    if run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        found.append(f"link {BRIDGE}")
    mounts = Path("/proc/mounts").read_text()
    found += [f"mount {line.split()[1]}" for line in mounts.splitlines() if line.split()[1].startswith(str(root))]
    return found
