"""The LiteFS watchdog: closes LiteFS's TCP connections to peers that stopped answering,
so LiteFS's own failover logic runs when a node fails *silently*.

Why (LiteFS v0.5.14, read in its source): a replica streams from the primary over h2c with
no read deadline (``store.go`` ``monitorLeaseAsReplica`` blocks in ``ReadStreamFrame``;
``http/client.go`` builds an ``http2.Transport`` without ``ReadIdleTimeout`` and dials with
plain ``net.Dial``), and the primary renews its Consul session through
``http.DefaultClient``, which has no timeout (``consul/consul.go``). When the primary is cut
off with packets silently dropped, or frozen (SIGSTOP: its kernel still answers TCP), the
replicas wait on the stream for minutes (Go's keepalive: 15 s idle + 9 probes x 15 s; never
while a frozen peer's kernel acks them) and never ask Consul for a new primary, and the old
primary's renewal blocks, so its "renewal exceeded the TTL" check never runs and it keeps
calling itself primary. LiteFS's heartbeats (one a second, as ``.lag``) make a dead stream
visible; nothing in LiteFS acts on it.

What: every ``CHECK_SECONDS`` this loop lists the TCP connections of the LiteFS process
(the one listening on ``--litefs-http``; its sockets are told apart by inode, from
``/proc/<pid>/fd``) with ``ss`` (iproute2) and closes, with
``ss -K`` (the kernel's SOCK_DESTROY), connections LiteFS *dialed* that are stalled:

- still connecting (SYN-SENT) after ``STALL_SECONDS``;
- with output pending (queued or unacknowledged) in every look for ``STALL_SECONDS`` (the
  peer's path is dead: a Consul renewal or a replication request into a black hole; with a
  blackhole route the kernel does not even count the data as sent, so "unacknowledged"
  alone misses it);
- on a replica whose ``.lag`` exceeds ``LAG_STALE_SECONDS`` (no heartbeat from the
  primary): connections that received nothing for ``LAG_STALE_SECONDS``.

LiteFS then sees an ordinary connection error: a replica re-reads the lease from Consul
(and takes it once the dead primary's session expired), and a cut-off primary's renewal
fails, so it steps down before Consul could give the lease to another node (see
docs/operations.md for the timing against the Consul TTL). Idle connections that merely
have nothing to say are never touched. Needs root or CAP_NET_ADMIN and ``ss``; without
them it logs once and stays off (the operator requirement is documented).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import subprocess
import time

from .. import metrics
from .base import Role
from .litefs import LiteFSNode

log = logging.getLogger(__name__)

CHECK_SECONDS = 0.5
STALL_SECONDS = 1.5
LAG_STALE_SECONDS = 2.5

_PID = re.compile(r"pid=(\d+)")
_FIELD = re.compile(r"\b(lastrcv|lastack|lastsnd|unacked):(\d+)")
_INO = re.compile(r"\bino:(\d+)")


class Conn:
    __slots__ = ("info", "local", "peer", "send_q", "state")

    def __init__(self, state: str, local: str, peer: str, info: dict[str, int], send_q: int = 0) -> None:
        self.state, self.local, self.peer, self.info, self.send_q = state, local, peer, info, send_q

    @property
    def key(self) -> tuple[str, str]:
        return (self.local, self.peer)

    @property
    def output_pending(self) -> bool:
        return self.send_q > 0 or self.info.get("unacked", 0) > 0


def parse_ss(output: str, state: str, inodes: set[int]) -> list[Conn]:
    """``ss -H -tnie state <state>`` output -> the connections whose socket inode is in
    ``inodes`` (LiteFS's own sockets: no ``ss -p`` walk of every process's descriptors)."""
    out: list[Conn] = []
    current: Conn | None = None
    for line in output.splitlines():
        if not line.strip():
            continue
        if line[0] in " \t":  # the info line of the previous socket
            if current is not None:
                current.info.update({k: int(v) for k, v in _FIELD.findall(line)})
            continue
        parts = line.split()
        ino = _INO.search(line)
        if len(parts) < 4 or ino is None or int(ino.group(1)) not in inodes:
            current = None
            continue
        send_q = int(parts[1]) if parts[1].isdigit() else 0
        current = Conn(state, parts[2], parts[3], {}, send_q)
        out.append(current)
    return out


def socket_inodes(pid: int) -> set[int] | None:
    """The inodes of process ``pid``'s sockets; None if it is gone."""
    inodes: set[int] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
    except FileNotFoundError:
        return None
    return inodes


def _port(address: str) -> str:
    return address.rpartition(":")[2]


class LiteFSWatchdog:
    def __init__(self, node: LiteFSNode, http_address: str) -> None:
        self._node = node
        self._http_port = _port(http_address)
        self._ss = shutil.which("ss")
        self._pid: int | None = None
        self._connecting: dict[tuple[str, str], float] = {}  # SYN-SENT (local, peer) -> first seen
        self._pending: dict[tuple[str, str], float] = {}  # output pending since (every look)
        self.closed = 0
        self._disabled = False

    async def loop(self) -> None:
        if self._ss is None:
            log.warning(
                "watchdog off: `ss` (iproute2) not found; a silently failed primary is then only replaced"
                " once LiteFS's own TCP timeouts fire (minutes) - see docs/operations.md"
            )
            await asyncio.Event().wait()  # stay 'running' for the supervisor
            return
        while not self._disabled:
            await asyncio.to_thread(self.check)
            await asyncio.sleep(CHECK_SECONDS)
        await asyncio.Event().wait()

    def _ss_run(self, *args: str) -> str:
        assert self._ss is not None
        return subprocess.run([self._ss, *args], capture_output=True, text=True, timeout=5, check=False).stdout

    def _litefs_pid(self) -> int | None:
        out = self._ss_run("-H", "-tlnp", "sport", "=", f":{self._http_port}")
        pids = {int(p) for p in _PID.findall(out)}
        return pids.pop() if len(pids) == 1 else None

    def check(self) -> int:
        """One look (blocking); returns how many connections it closed."""
        if self._pid is None:
            self._pid = self._litefs_pid()
            if self._pid is None:
                return 0
        inodes = socket_inodes(self._pid)
        if inodes is None:  # LiteFS restarted (new pid): look it up again next time
            self._pid = None
            return 0
        established = parse_ss(self._ss_run("-H", "-tnie", "state", "established"), "established", inodes)
        connecting = parse_ss(self._ss_run("-H", "-tne", "state", "syn-sent"), "syn-sent", inodes)
        stale_ms = STALL_SECONDS * 1000
        lag_stale = False
        if self._node.role() is Role.REPLICA:
            lag = self._node.lag_ms()
            lag_stale = lag is not None and lag > LAG_STALE_SECONDS * 1000
        now = time.monotonic()
        victims: list[Conn] = []
        seen: set[tuple[str, str]] = set()
        for conn in connecting:
            key = (conn.local, conn.peer)
            seen.add(key)
            first = self._connecting.setdefault(key, now)
            if now - first > STALL_SECONDS:
                victims.append(conn)
        self._connecting = {k: v for k, v in self._connecting.items() if k in seen}
        pending: dict[tuple[str, str], float] = {}
        for conn in established:
            if _port(conn.local) == self._http_port:
                continue  # accepted by LiteFS (a replica streaming from us, /events): not dialed
            info = conn.info
            if conn.output_pending:
                since = pending[conn.key] = self._pending.get(conn.key, now)
                if now - since > STALL_SECONDS and info.get("lastack", 0) > stale_ms:
                    victims.append(conn)
                    continue
            if lag_stale and info.get("lastrcv", 0) > LAG_STALE_SECONDS * 1000:
                victims.append(conn)
        self._pending = pending
        for conn in victims:
            self._kill(conn)
        return len(victims)

    def _kill(self, conn: Conn) -> None:
        lhost, _, lport = conn.local.rpartition(":")
        phost, _, pport = conn.peer.rpartition(":")
        result = subprocess.run(
            [str(self._ss), "-K", "-tn", "state", conn.state, "src", f"{lhost}:{lport}", "dst", f"{phost}:{pport}"],
            capture_output=True, text=True, timeout=5, check=False,
        )
        if result.returncode != 0:
            log.warning(
                "watchdog off: `ss -K` failed (%s); needs root or CAP_NET_ADMIN - see docs/operations.md",
                result.stderr.strip(),
            )
            self._disabled = True
            return
        self.closed += 1
        metrics.WATCHDOG_KILLS.inc()
        log.warning(
            "watchdog: closed LiteFS's stalled connection %s -> %s (%s, %s); LiteFS re-resolves the primary",
            conn.local, conn.peer, conn.state, " ".join(f"{k}={v}" for k, v in sorted(conn.info.items())),
        )
