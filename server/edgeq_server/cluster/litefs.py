"""What LiteFS says about this node: its role (a state machine fed by ``/events``), its
replication position, and the checksums of recent transactions.

LiteFS (https://fly.io/docs/litefs/) exposes, besides the FUSE mount:

- ``GET <http>/events``: newline-delimited JSON; ``init`` first, then ``primaryChange``
  (``isPrimary`` and the primary's ``hostname``, which each node sets to its gRPC address)
  and ``tx`` (``txID`` and ``postApplyChecksum`` of every transaction applied here).
- ``<mount>/<db>-pos``: ``<16 hex TXID>/<16 hex checksum>``, this node's position.
- ``<mount>/.primary``: the primary's hostname, present only on a replica connected to it.
- ``<mount>/.lag``: milliseconds since the last transaction or heartbeat from the primary.

The role is UNKNOWN until LiteFS's ``init`` event arrives and whenever the ``/events``
stream is down; only an ``isPrimary: true`` event on a live stream makes the node PRIMARY.
While ``/events`` is down, a present ``.primary`` file still says REPLICA (of that node);
an absent one proves nothing (LiteFS removes it while a replica reconnects) and the role
stays UNKNOWN. Role changes are delivered to listeners on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from .base import Role

log = logging.getLogger(__name__)

#: Wait between attempts to (re)connect to ``/events``.
EVENTS_RETRY_SECONDS = 0.5
EVENTS_CONNECT_SECONDS = 2.0
#: Transaction checksums remembered (the primary checks replicas' positions against them).
CHECKSUMS_KEPT = 65536


class Pos(NamedTuple):
    """A LiteFS ``-pos`` file: the last transaction's TXID and its checksum (16 hex digits)."""

    txid: int
    checksum: str


def parse_pos(text: str, source: Path | str = "-pos") -> Pos:
    """``<16 hex TXID>/<16 hex checksum>`` -> Pos; (0, "") for an empty file."""
    text = text.strip()
    if not text:
        return Pos(0, "")
    txid, _, checksum = text.partition("/")
    try:
        return Pos(int(txid, 16), checksum)
    except ValueError:
        raise ValueError(f"unexpected LiteFS position {text!r} in {source}") from None


def read_txid(pos_file: Path) -> int:
    """The TXID in a ``-pos`` file; 0 if it does not exist yet or is empty."""
    try:
        text = pos_file.read_text()
    except FileNotFoundError:
        return 0
    return parse_pos(text, pos_file).txid


class LiteFSNode:
    """One node's view of its LiteFS mount: role, primary, position, checksums."""

    def __init__(self, mount: str, db_name: str, http_address: str) -> None:
        self.mount = Path(mount)
        self.db_name = db_name
        self.db_path = str(self.mount / db_name)
        self.http_address = http_address
        self._pos = Path(self.db_path + "-pos")
        self._pos_fd: int | None = None
        self._pos_lock = threading.Lock()
        self._primary_file = self.mount / ".primary"
        self._lag_file = self.mount / ".lag"
        self._role = Role.UNKNOWN
        self._primary: str | None = None
        self._latest = 0  # highest TXID seen (events or -pos reads); cheap to read
        self._checksums: OrderedDict[int, str] = OrderedDict()
        self._checksum_lock = threading.Lock()
        self._events_up = False
        self._ready = threading.Event()  # the first /events message (init) arrived
        self._stop = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._thread: threading.Thread | None = None
        self._position_listeners: list[Callable[[int, str], None]] = []
        self._role_listeners: list[Callable[[Role], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ position

    def read_pos(self) -> Pos:
        """This node's position (TXID, checksum), read from ``-pos`` (blocking: FUSE).

        pread on a descriptor kept open: 0.19 ms against 0.59 ms for open+read+close
        through FUSE, and always current (LiteFS invalidates the kernel's cache of the
        file on every position change)."""
        fd = self._pos_fd
        if fd is None:
            with self._pos_lock:
                if self._pos_fd is None:
                    try:
                        self._pos_fd = os.open(self._pos, os.O_RDONLY)
                    except FileNotFoundError:
                        return Pos(0, "")
                fd = self._pos_fd
        pos = parse_pos(os.pread(fd, 64, 0).decode(), self._pos)
        self._note(pos.txid, pos.checksum)
        return pos

    def txid(self) -> int:
        """``read_pos()``'s TXID (blocking)."""
        return self.read_pos().txid

    def latest(self) -> int:
        """The highest TXID this node has seen applied (in memory: never blocks). After a
        failover LiteFS may move a node to another lineage with lower TXIDs: ``read_pos``
        is the truth, and resets this."""
        return self._latest

    def checksum_at(self, txid: int) -> str | None:
        """The post-apply checksum of transaction ``txid`` here, if still remembered."""
        with self._checksum_lock:
            return self._checksums.get(txid)

    def _note(self, txid: int, checksum: str) -> None:
        if not txid:
            return
        with self._checksum_lock:
            if txid < self._latest:  # another lineage (LiteFS restored/snapshotted us)
                self._checksums.clear()
            self._latest = txid
            if checksum:
                self._checksums[txid] = checksum
                self._checksums.move_to_end(txid)
                while len(self._checksums) > CHECKSUMS_KEPT:
                    self._checksums.popitem(last=False)

    def lag_ms(self) -> int | None:
        """LiteFS ``.lag``: ms since the primary was last heard from (blocking; None if absent)."""
        try:
            return int(self._lag_file.read_text().strip())
        except (OSError, ValueError):  # absent, or the mount is gone (LiteFS exited: ENOTCONN)
            return None

    # ------------------------------------------------------------------ role

    def role(self) -> Role:
        return self._role

    def is_primary(self) -> bool:
        return self._role is Role.PRIMARY

    def primary_address(self) -> str | None:
        """The primary's address on a replica that knows it; None otherwise."""
        return self._primary if self._role is Role.REPLICA else None

    def read_primary(self) -> str | None:
        """Read ``.primary`` now (blocking): the primary's address, None if absent."""
        try:
            return self._primary_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def on_position(self, listener: Callable[[int, str], None]) -> None:
        """Call ``listener(txid, checksum)`` (on the events thread) whenever this database's position moves."""
        self._position_listeners.append(listener)

    def on_role_change(self, listener: Callable[[Role], None]) -> None:
        """Call ``listener(role)`` on the event loop whenever the role changes."""
        self._role_listeners.append(listener)

    def _set_role(self, role: Role, primary: str | None) -> None:
        primary = primary if role is Role.REPLICA else None
        if role is self._role and primary == self._primary:
            return
        previous = self._role
        self._role, self._primary = role, primary
        log.info(
            "LiteFS role: %s -> %s", previous.value,
            f"replica of {primary or '(no primary connected)'}" if role is Role.REPLICA else role.value,
        )
        if role is not previous and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: shutting down
                self._loop.call_soon_threadsafe(self._notify_role, role)

    def _notify_role(self, role: Role) -> None:
        if role is not self._role:
            return  # superseded by a later change
        for listener in self._role_listeners:
            try:
                listener(role)
            except Exception:
                log.exception("role change listener failed")

    # ------------------------------------------------------------------ /events

    def start(self) -> None:
        """Follow ``/events`` on a daemon thread."""
        self._loop = asyncio.get_running_loop()
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow_events, name="edgeq-litefs-events", daemon=True)
            self._thread.start()

    def wait_ready(self, seconds: float) -> bool:
        """Wait (blocking) until ``/events`` gave the role."""
        return self._ready.wait(seconds)

    @property
    def events_up(self) -> bool:
        return self._events_up

    def stop(self) -> None:
        self._stop.set()
        with self._pos_lock:
            if self._pos_fd is not None:
                os.close(self._pos_fd)
                self._pos_fd = None
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def _follow_events(self) -> None:
        host, _, port = self.http_address.rpartition(":")
        failures = 0
        while not self._stop.is_set():
            try:
                self._conn = http.client.HTTPConnection(host or "127.0.0.1", int(port), timeout=EVENTS_CONNECT_SECONDS)
                self._conn.request("GET", "/events")
                response = self._conn.getresponse()
                if response.status != 200:
                    raise http.client.HTTPException(f"HTTP {response.status}")
                # LiteFS is silent while idle: no read timeout (it is local; if it dies, the
                # connection closes). A reconnect is a role blip, so none is made on purpose.
                if self._conn.sock is not None:
                    self._conn.sock.settimeout(None)
                for line in response:
                    self._event(json.loads(line))
                    if not self._events_up:
                        self._events_up = True
                        failures = 0
                    self._ready.set()
                raise http.client.HTTPException("stream ended")
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                failures += 1
                if self._events_up or failures == 1:
                    log.warning("LiteFS /events at %s: %s; reconnecting", self.http_address, exc)
            finally:
                if self._conn is not None:
                    self._conn.close()
            if self._stop.is_set():
                return
            if self._events_up or self._role is Role.PRIMARY:
                self._events_up = False
                # No word from LiteFS: not primary any more until it says so again; a
                # .primary file still proves "replica of".
                current = self.read_primary()
                self._set_role(Role.REPLICA if current else Role.UNKNOWN, current)
            elif self._role is not Role.REPLICA or self._primary is None:
                current = self.read_primary()
                if current:
                    self._set_role(Role.REPLICA, current)
            self._stop.wait(EVENTS_RETRY_SECONDS)

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in ("init", "primaryChange"):
            data = event.get("data") or {}
            if data.get("isPrimary"):
                self._set_role(Role.PRIMARY, None)
            else:
                self._set_role(Role.REPLICA, data.get("hostname") or None)
        elif kind == "tx" and event.get("db") == self.db_name:
            data = event["data"]
            txid = int(data["txID"], 16)
            checksum = str(data.get("postApplyChecksum") or "")
            self._note(txid, checksum)
            for listener in self._position_listeners:
                listener(txid, checksum)
