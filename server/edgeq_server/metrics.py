"""Prometheus metrics (prometheus-client): what is counted, in one place.

Served on ``--metrics-address`` (e.g. ``127.0.0.1:9464``) when set; off by default. The
metrics are process-wide (the default registry), like the library's own process metrics.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .models import QueueDepth

log = logging.getLogger(__name__)

ENQUEUED = Counter("edgeq_jobs_enqueued_total", "Jobs stored by Enqueue (duplicates excluded)", ["queue"])
DELIVERED = Counter("edgeq_jobs_delivered_total", "Jobs leased and pushed on a Lease stream", ["queue"])
SETTLED = Counter(
    "edgeq_jobs_settled_total",
    "Ack/Nack items by result: completed, retried, failed, stale, invalid",
    ["result"],
)
EXPIRED = Counter("edgeq_leases_expired_total", "Leases that lapsed and were ended by the expiry sweep")
DELETED = Counter("edgeq_jobs_deleted_total", "Final jobs deleted by the retention sweep")
STREAMS = Gauge("edgeq_lease_streams", "Open Lease streams")
OUTSTANDING = Gauge("edgeq_leases_outstanding", "Leases handed out by this node and not yet ended")
WRITE_BATCH = Histogram(
    "edgeq_write_batch_ops",
    "Operations per group-commit transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
WRITE_SECONDS = Histogram(
    "edgeq_write_transaction_seconds",
    "Duration of one group-commit transaction (BEGIN to COMMIT)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)


def serve(address: str) -> None:
    """Start the /metrics HTTP endpoint on ``host:port`` (a daemon thread); an IPv6 host
    is written as for ``--host``: ``[::]:9464``."""
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host.removeprefix("[").removesuffix("]") or "127.0.0.1")


LOOP_RESTARTS = Counter(
    "edgeq_loop_restarts_total", "Background loops restarted after failing or ending (supervise.py)", ["loop"]
)
AUTH_FAILURES = Counter(
    "edgeq_auth_failures_total", "Calls refused for missing, unknown or rate-limited credentials", ["reason"]
)
ROLE = Gauge("edgeq_cluster_role", "This node's cluster role: 0 unknown, 1 replica, 2 primary, 3 standalone")
BUFFER_PENDING = Gauge("edgeq_enqueue_buffer_pending", "Enqueue requests waiting in this node's edge log")
BUFFER_DEAD = Gauge("edgeq_enqueue_buffer_dead", "Edge-log Enqueue requests the primary refused for good")
EDGE_LOG_JOBS = Gauge("edgeq_edge_log_jobs", "Jobs accepted at this node's edge and not yet stored on the primary")
EDGE_LOG_BYTES = Gauge("edgeq_edge_log_bytes", "Bytes of requests waiting in this node's edge log")
EDGE_LOG_OLDEST_AGE = Gauge("edgeq_edge_log_oldest_age_seconds", "Age of the oldest job waiting in the edge log")
EDGE_LOG_DRAINED = Counter("edgeq_edge_log_drained_total", "Edge-log jobs the drain stored on the primary")
EDGE_LOG_REOFFERED = Counter(
    "edgeq_edge_log_reoffered_total", "Drained edge-log requests offered again to a new primary (it dedupes them)"
)
WATCHDOG_KILLS = Counter(
    "edgeq_litefs_stalled_connections_closed_total",
    "LiteFS TCP connections closed by the watchdog because the peer stopped answering",
)

#: Distinct queue names used as metric labels; later queues share the label "_other", so a
#: producer inventing queue names cannot grow the metrics without bound.
MAX_QUEUE_LABELS = 1000
_queue_labels: set[str] = set()


def queue_label(queue: str) -> str:
    """``queue`` as a metric label value, capped at ``MAX_QUEUE_LABELS`` distinct names."""
    if queue in _queue_labels:
        return queue
    if len(_queue_labels) < MAX_QUEUE_LABELS:
        _queue_labels.add(queue)
        return queue
    return "_other"


#: Seconds from when a job could run (its run_at, or its enqueue) to its lease, and from
#: its lease to its Ack/Nack: the two numbers that page someone when workers fall behind.
_TIME_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
JOB_WAIT = Histogram(
    "edgeq_job_wait_seconds", "From when a job could run to when a worker leased it", ["queue"], buckets=_TIME_BUCKETS
)
JOB_RUN = Histogram(
    "edgeq_job_run_seconds", "From a job's lease to its Ack or Nack (one attempt)", ["queue"], buckets=_TIME_BUCKETS
)


class _QueueDepths(Collector):
    """``edgeq_queue_jobs{queue,state}`` and ``edgeq_queue_oldest_ready_age_seconds{queue}``,
    read from the database when Prometheus scrapes (a query over the pending and running
    jobs only: partial indexes, not the whole table). ``source`` is set by the running
    server; with none (a client process, a stopped server) nothing is exported."""

    def __init__(self) -> None:
        self.source: Callable[[], Sequence[QueueDepth]] | None = None
        self._lock = threading.Lock()  # scrapes may come on several HTTP threads

    def collect(self) -> Iterator[GaugeMetricFamily]:
        source = self.source
        if source is None:
            return
        try:
            with self._lock:
                depths = list(source())
        except Exception:  # a failed scrape must not take /metrics down
            log.exception("reading queue depths for /metrics failed")
            return
        jobs = GaugeMetricFamily("edgeq_queue_jobs", "Jobs per queue in a live state", labels=["queue", "state"])
        age = GaugeMetricFamily(
            "edgeq_queue_oldest_ready_age_seconds",
            "How long the oldest due job of a queue has waited",
            labels=["queue"],
        )
        merged: dict[str, list[float]] = {}  # queues past the label cap add up under "_other"
        for d in depths:
            m = merged.setdefault(queue_label(d.queue), [0, 0, 0, 0.0])
            m[0] += d.ready
            m[1] += d.scheduled
            m[2] += d.running
            m[3] = max(m[3], d.oldest_ready_age_seconds)
        for label, (ready, scheduled, running, oldest) in merged.items():
            jobs.add_metric([label, "ready"], ready)
            jobs.add_metric([label, "scheduled"], scheduled)
            jobs.add_metric([label, "running"], running)
            age.add_metric([label], oldest)
        yield jobs
        yield age

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


QUEUE_DEPTHS = _QueueDepths()
REGISTRY.register(QUEUE_DEPTHS)


class _ReplicaLag(Collector):
    """On a primary, per replica: ``edgeq_replica_lag_txids`` (transactions it has not
    applied yet) and ``edgeq_replica_report_age_seconds`` (since its last position report),
    read from memory at scrape time. ``source`` is set by the running server."""

    def __init__(self) -> None:
        self.source: Callable[[], Sequence[Any]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        source = self.source
        if source is None:
            return
        lag = GaugeMetricFamily(
            "edgeq_replica_lag_txids", "Transactions a replica has not applied yet", labels=["replica"]
        )
        age = GaugeMetricFamily(
            "edgeq_replica_report_age_seconds", "Seconds since a replica last reported its position", labels=["replica"]
        )
        for r in source():
            lag.add_metric([r.replica], r.txids_behind)
            age.add_metric([r.replica], r.report_age_seconds)
        yield lag
        yield age

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


REPLICA_LAG = _ReplicaLag()
REGISTRY.register(REPLICA_LAG)
