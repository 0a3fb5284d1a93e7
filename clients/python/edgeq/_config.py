"""Channel creation: the gRPC options every edgeq client channel uses.

Owns the defaults (target, per-call deadline), the service config with the retry policy
for ``edgeq.v1.QueueService`` (gRPC retries UNAVAILABLE itself: no hand-rolled retry loop
for it; the Client resends only writes answered CommittedNotReplicated, see ``_client``),
keepalive pings, reconnect backoff and message size limits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "MAX_MESSAGE_BYTES",
    "SERVICE_CONFIG",
    "channel_options",
    "create_channel",
]

#: Where a Client connects when given no target.
DEFAULT_TARGET = "127.0.0.1:50051"
#: Deadline of every unary call, in seconds (per Client: ``Client(timeout=...)``).
DEFAULT_TIMEOUT = 10.0
#: Largest gRPC message sent or received (the server's default limit too).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_SERVICE = "edgeq.v1.QueueService"

#: gRPC service config: every QueueService method retries UNAVAILABLE up to 5 attempts
#: with exponential backoff (0.1 s doubling to 2 s, jittered by gRPC). The call deadline
#: bounds all attempts together.
SERVICE_CONFIG: dict[str, Any] = {
    "methodConfig": [
        {
            "name": [{"service": _SERVICE}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}


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


def create_channel(target: str = DEFAULT_TARGET, *, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """An insecure channel to ``target`` (``host:port``) with edgeq's options."""
    return grpc.insecure_channel(target, options=channel_options(options))
