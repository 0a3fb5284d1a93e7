"""TLS for the gRPC port and for calls between nodes.

Owns the server's certificate, key and client CA (``--tls-cert``, ``--tls-key``,
``--tls-client-ca``): the credentials the port serves with, re-read when the files change
(checked at every new connection: a stat of each file) or on SIGHUP, so certificates from
an ACME or SPIFFE issuer rotate in place. Connections already open keep the certificate
they were made with; only new handshakes see the new one. A half-written pair (a new
certificate whose key is not there yet) is not taken: the old pair stays until the files
agree. With a client CA every client must present a certificate it signed (mTLS).

Also owns the credentials this node uses to call other nodes (forwarded writes, proxied
Lease streams, position reports): TLS when the server has TLS, verifying the peer against
``--peer-ca`` (default: the client CA, else the system roots) and presenting this node's
own certificate (needed when the primary requires mTLS).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass

import grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Pair:
    cert: bytes
    key: bytes
    client_ca: bytes | None


def _read(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"{flag}: {path} is not a PEM file")
    return data


class ServerTLS:
    """The server's TLS files and the credentials built from them."""

    def __init__(self, cert: str, key: str, client_ca: str = "", peer_ca: str = "") -> None:
        self._cert_path = cert
        self._key_path = key
        self._client_ca_path = client_ca
        self._peer_ca_path = peer_ca
        self._lock = threading.Lock()
        self._pair = self._load()  # raises ValueError naming the flag
        self._stamp = self._stamps()
        self._force = False
        self._failed_stamp: tuple[tuple[int, int, int], ...] | None = None
        #: Bumped on every reload (the node-to-node channels follow it).
        self.generation = 0
        self._given = 0  # the generation gRPC serves
        peer = peer_ca or client_ca
        self._peer_ca = _read(peer, "--peer-ca" if peer_ca else "--tls-client-ca") if peer else None

    @property
    def cert_path(self) -> str:
        return self._cert_path

    @property
    def key_path(self) -> str:
        return self._key_path

    @property
    def client_ca_path(self) -> str:
        return self._client_ca_path

    def file_stamps(self) -> tuple[tuple[int, int, int], ...]:
        """(mtime, size, inode) of each file: changes when any of them is replaced."""
        return self._stamps()

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate (mTLS)."""
        return bool(self._client_ca_path)

    def _paths(self) -> tuple[str, ...]:
        return tuple(p for p in (self._cert_path, self._key_path, self._client_ca_path) if p)

    def _stamps(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for p in self._paths():
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def _load(self) -> _Pair:
        cert = _read(self._cert_path, "--tls-cert")
        key = _read(self._key_path, "--tls-key")
        client_ca = _read(self._client_ca_path, "--tls-client-ca") if self._client_ca_path else None
        # The key must belong to the certificate (a rotation caught between the two files
        # would otherwise fail every handshake).
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self._cert_path, self._key_path)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"--tls-cert/--tls-key: the key does not match the certificate ({exc})") from None
        return _Pair(cert, key, client_ca)

    def _config(self) -> grpc.ServerCertificateConfiguration:
        pair = self._pair
        return grpc.ssl_server_certificate_configuration([(pair.key, pair.cert)], root_certificates=pair.client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials for ``add_secure_port``, re-reading the files as they change."""
        return grpc.dynamic_ssl_server_credentials(
            self._config(),
            self._fetch,  # type: ignore[arg-type]  # None means "no change" (grpc docs); the stubs omit it
            require_client_authentication=self.mutual,
        )

    def reload(self) -> None:
        """Re-read the files now (SIGHUP), whether or not they look changed; the next
        handshake serves what was read."""
        with self._lock:
            self._force = True
            self._refresh()

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """(gRPC calls this before every new handshake.) A new configuration when the files
        changed (and agree with each other) since gRPC was last given one, else None
        (keep the current one)."""
        with self._lock:
            self._refresh()
            if self.generation == self._given:
                return None
            self._given = self.generation
            return self._config()

    def _refresh(self) -> None:
        """(Under the lock.) Take the files if they changed and agree with each other."""
        try:
            stamp = self._stamps()
        except OSError as exc:
            if self._failed_stamp != ():
                log.warning("TLS: cannot stat the certificate files (%s); serving the current ones", exc)
                self._failed_stamp = ()
            return
        if stamp == self._stamp and not self._force:
            return
        try:
            pair = self._load()
        except ValueError as exc:
            if stamp != self._failed_stamp:
                log.warning("TLS: not reloading (%s); serving the current certificate until the files agree", exc)
                self._failed_stamp = stamp
            return
        self._force = False
        self._failed_stamp = None
        changed = pair != self._pair
        self._pair, self._stamp = pair, stamp
        if changed:
            self.generation += 1
            log.info("TLS: certificate reloaded from %s", self._cert_path)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """How this node calls other nodes: verify them against the peer CA (or the system
        roots), present this node's certificate."""
        pair = self._pair
        return grpc.ssl_channel_credentials(
            root_certificates=self._peer_ca, private_key=pair.key, certificate_chain=pair.cert
        )
