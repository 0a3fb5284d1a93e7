"""Lease tokens: fencing tokens that name a job's delivery and prove this cluster issued them.

A token is ``<job_id>.<lease_id>.<mac>``: ``lease_id`` is the random id the store wrote on the
job when it leased it (so a token matches exactly one delivery, even after RetryJob resets the
attempt count), and ``mac`` is a truncated HMAC-SHA256 over both under the cluster's token key
(kept in the database, so every node and every future primary can verify it).

- malformed text (wrong shape)           -> ``parse`` raises ValueError (validate: LEASE_OUTCOME_INVALID
                                            for that item only)
- well formed, MAC does not verify       -> ``parse`` returns None (LEASE_OUTCOME_INVALID)
- verifies but names an old delivery     -> the store reports STALE
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

_SHAPE = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.([0-9a-f]{16})\.([0-9a-f]{16})$")
MAX_TOKEN_LENGTH = 128


@dataclass(frozen=True, slots=True)
class LeaseRef:
    """What a verified token names: one delivery of one job."""

    job_id: str
    lease_id: str


class TokenCodec:
    """Signs and verifies lease tokens with the cluster key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("token key must be at least 16 bytes")
        self._key = key

    def _mac(self, job_id: str, lease_id: str) -> str:
        msg = f"{job_id}.{lease_id}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:16]

    def issue(self, job_id: str, lease_id: str) -> str:
        return f"{job_id}.{lease_id}.{self._mac(job_id, lease_id)}"

    def parse(self, token: str) -> LeaseRef | None:
        """Return the delivery a token names, or None if this cluster did not sign it.

        Raises ValueError if the text is not shaped like a lease token at all.
        """
        if len(token) > MAX_TOKEN_LENGTH:
            raise ValueError("longer than a lease token")
        m = _SHAPE.fullmatch(token)  # match() would let '$' accept a trailing newline
        if m is None:
            raise ValueError("not a lease token")
        job_id, lease_id, mac = m.groups()
        if not hmac.compare_digest(mac, self._mac(job_id, lease_id)):
            return None
        return LeaseRef(job_id, lease_id)
