"""Prometheus metrics a queue's operator pages on: backlog per queue and state, the age of
the oldest due job, wait time (could run → leased) and run time (leased → settled)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from support.serverthread import ServerThread
from support.wait import until

from edgeq import Client, LeasedJob, Worker


@pytest.fixture(autouse=True)
def fresh_queue_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queue labels are capped per process (MAX_QUEUE_LABELS): in a full test run earlier
    tests have used them up, and these queues would all be "_other"."""
    from edgeq_server import metrics

    monkeypatch.setattr(metrics, "_queue_labels", set())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    st = ServerThread(str(tmp_path / "m.db"))
    st.start()
    try:
        yield st
    finally:
        st.close()


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_queue_depth_gauges_and_wait_and_run_histograms(server: ServerThread) -> None:
    queue = f"depth-{uuid.uuid4().hex[:8]}"
    release, started = threading.Event(), threading.Event()

    def handler(job: LeasedJob) -> None:
        started.set()
        release.wait(20)

    with Client(server.target) as client:
        for _ in range(3):
            client.enqueue(queue, b"now")
        for _ in range(2):
            client.enqueue(queue, b"later", delay=3600)
        with Worker(client, [queue], handler, concurrency=1, max_in_flight=1):
            assert started.wait(20)
            until(lambda: sample("edgeq_queue_jobs", queue=queue, state="running") == 1, what="running gauge")
            assert sample("edgeq_queue_jobs", queue=queue, state="ready") == 2
            assert sample("edgeq_queue_jobs", queue=queue, state="scheduled") == 2
            assert (sample("edgeq_queue_oldest_ready_age_seconds", queue=queue) or 0) > 0
            assert sample("edgeq_job_wait_seconds_count", queue=queue) == 1
            release.set()
            until(lambda: sample("edgeq_queue_jobs", queue=queue, state="ready") == 0, what="the ready jobs to run")
            until(lambda: sample("edgeq_job_run_seconds_count", queue=queue) == 3, what="three runs settled")
        assert sample("edgeq_job_wait_seconds_count", queue=queue) == 3
        run_sum = sample("edgeq_job_run_seconds_sum", queue=queue)
        assert run_sum is not None and run_sum > 0
    until(lambda: sample("edgeq_queue_jobs", queue=queue, state="running") == 0, what="no job running")
    assert sample("edgeq_queue_oldest_ready_age_seconds", queue=queue) == 0


def test_no_depth_gauges_without_a_running_server(tmp_path: Path) -> None:
    st = ServerThread(str(tmp_path / "gone.db"))
    st.start()
    queue = f"gone-{uuid.uuid4().hex[:8]}"
    with Client(st.target) as client:
        client.enqueue(queue, b"x")
    assert sample("edgeq_queue_jobs", queue=queue, state="ready") == 1
    st.close()
    assert sample("edgeq_queue_jobs", queue=queue, state="ready") is None


def test_the_grafana_dashboard_uses_only_metrics_the_server_exports() -> None:
    import json
    import re

    from edgeq_server import metrics

    root = Path(__file__).resolve().parents[2]
    dashboard = json.loads((root / "docs/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count|total)$", "", m) for e in exprs for m in re.findall(r"edgeq_[a-z_]+", e)}
    exported = {
        re.sub(r"_total$", "", m._name)  # type: ignore[attr-defined]
        for m in vars(metrics).values() if hasattr(m, "_name") and hasattr(m, "_documentation")
    } | {  # the scrape-time collectors' families
        "edgeq_queue_jobs", "edgeq_queue_oldest_ready_age_seconds",
        "edgeq_replica_lag_txids", "edgeq_replica_report_age_seconds",
    }
    assert used <= exported, f"the dashboard reads metrics nobody exports: {sorted(used - exported)}"
    assert {"edgeq_queue_jobs", "edgeq_job_wait_seconds", "edgeq_job_run_seconds"} <= used


def test_replica_lag_gauges_come_from_the_primarys_cluster_view() -> None:
    from edgeq_server import metrics
    from edgeq_server.cluster.base import ReplicaLag

    previous = metrics.REPLICA_LAG.source
    metrics.REPLICA_LAG.source = lambda: [ReplicaLag("10.0.0.2:50051", 7, 0.25), ReplicaLag("10.0.0.3:50051", 0, 0.1)]
    try:
        assert sample("edgeq_replica_lag_txids", replica="10.0.0.2:50051") == 7
        assert sample("edgeq_replica_lag_txids", replica="10.0.0.3:50051") == 0
        assert sample("edgeq_replica_report_age_seconds", replica="10.0.0.2:50051") == 0.25
    finally:
        metrics.REPLICA_LAG.source = previous


def test_a_standalone_node_reports_no_replica_lag(server: ServerThread) -> None:
    assert server.server is not None and server.server.cluster.replica_lag() == []
    assert sample("edgeq_replica_lag_txids", replica="anything") is None
