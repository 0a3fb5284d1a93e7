"""Channel creation: the gRPC options every edgeq client channel uses, and TLS.

Owns the defaults (target, per-call deadline), TLS (``TLS``, and the target schemes:
``edgeqs://host:port`` is TLS verified against the system roots, ``edgeq://host:port`` and
a bare ``host:port`` are plaintext unless ``tls=`` says otherwise), the service config with the retry policy
for ``edgeq.v1.QueueService`` (gRPC retries UNAVAILABLE itself: no hand-rolled retry loop
for it; the Client resends only writes answered CommittedNotReplicated, see ``_client``),
keepalive pings, reconnect backoff and message size limits.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "MAX_MESSAGE_BYTES",
    "SERVICE_CONFIG",
    "TLS",
    "channel_options",
    "create_channel",
]

#: Where a Client connects when given no target.
DEFAULT_TARGET = "127.0.0.1:50051"
#: Deadline of every unary call, in seconds (per Client: ``Client(timeout=...)``).
DEFAULT_TIMEOUT = 10.0
#: Largest gRPC message sent or received (the server's default limit too).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


#: gRPC service config: every QueueService method retries UNAVAILABLE up to 5 attempts
#: with exponential backoff (0.1 s doubling to 2 s, jittered by gRPC). The call deadline
#: bounds all attempts together. The one policy of all three SDKs: clients/service-config.json,
#: copied into this package by scripts/gen (docs/worker-contract.md, §8).
SERVICE_CONFIG: dict[str, Any] = json.loads(
    importlib.resources.files("edgeq").joinpath("service_config.json").read_text(encoding="utf-8")
)


def channel_options(extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """The channel options edgeq uses; ``extra`` entries come last (and win)."""
    return [
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
        ("grpc.enable_retries", 1),
        # Ping idle connections (a Lease stream can be quiet for long) so dead peers are noticed.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Reconnect to a restarted server within seconds, not gRPC's default of up to 2 minutes.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 5_000),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        *extra,
    ]


#: Target schemes: TLS, and plaintext said explicitly.
TLS_SCHEME = "edgeqs://"
PLAIN_SCHEME = "edgeq://"


def _pem(value: bytes | str | None) -> bytes | None:
    """PEM bytes as given, or read from a file path."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True)
class TLS:
    """TLS for a channel.

    ``ca``: the CA (PEM bytes or a file path) the server's certificate must chain to; None
    trusts the system roots. ``cert`` and ``key``: this client's certificate and key, for
    a server that requires client certificates (mTLS). ``server_name``: the name to verify
    the server's certificate against, when it differs from the host you dial."""

    ca: bytes | str | None = None
    cert: bytes | str | None = None
    key: bytes | str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLS: cert and key go together (a client certificate needs its key)")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca), private_key=_pem(self.key), certificate_chain=_pem(self.cert)
        )


#: What ``tls=`` accepts: None/False (plaintext, unless the target says ``edgeqs://``),
#: True (TLS with the system roots), a ``TLS`` (or a dict of its fields), or ready gRPC
#: channel credentials.
TLSOption = TLS | Mapping[str, Any] | grpc.ChannelCredentials | bool | None


def split_target(target: str, tls: TLSOption = None) -> tuple[str, TLS | grpc.ChannelCredentials | None]:
    """``target`` without its scheme, and the TLS to use (None: plaintext)."""
    if target.startswith(TLS_SCHEME):
        target = target.removeprefix(TLS_SCHEME)
        if tls is False:
            raise ValueError(f"{TLS_SCHEME} means TLS; tls=False contradicts it")
        if tls is None or tls is True:
            tls = TLS()
    elif target.startswith(PLAIN_SCHEME):
        target = target.removeprefix(PLAIN_SCHEME)
        if tls not in (None, False):
            raise ValueError(f"{PLAIN_SCHEME} means plaintext; use {TLS_SCHEME} (or a bare host:port) with tls=")
    if tls is True:
        tls = TLS()
    if tls is None or tls is False:
        return target, None
    if isinstance(tls, Mapping):
        tls = TLS(**tls)
    return target, tls


def _channel_args(
    target: str, options: Sequence[tuple[str, Any]], tls: TLSOption
) -> tuple[str, grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    """(address, credentials or None for plaintext, options) of a channel to ``target``."""
    address, chosen = split_target(target, tls)
    if chosen is None:
        return address, None, channel_options(options)
    extra = list(options)
    if isinstance(chosen, TLS):
        if chosen.server_name:
            extra.append(("grpc.ssl_target_name_override", chosen.server_name))
        creds = chosen.credentials()
    else:
        creds = chosen
    return address, creds, channel_options(extra)


def create_channel(
    target: str = DEFAULT_TARGET, *, options: Sequence[tuple[str, Any]] = (), tls: TLSOption = None
) -> grpc.Channel:
    """A channel to ``target`` (``host:port``, ``edgeqs://host:port`` for TLS) with edgeq's
    options; ``tls`` as in ``TLSOption``."""
    address, creds, opts = _channel_args(target, options, tls)
    if creds is None:
        return grpc.insecure_channel(address, options=opts)
    return grpc.secure_channel(address, creds, options=opts)


def create_aio_channel(
    target: str = DEFAULT_TARGET, *, options: Sequence[tuple[str, Any]] = (), tls: TLSOption = None
) -> grpc.aio.Channel:
    """``create_channel`` for asyncio (grpc.aio): the same options, retry policy and TLS."""
    address, creds, opts = _channel_args(target, options, tls)
    if creds is None:
        return grpc.aio.insecure_channel(address, options=opts)
    return grpc.aio.secure_channel(address, creds, options=opts)
