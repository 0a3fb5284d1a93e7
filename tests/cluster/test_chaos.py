"""Jepsen-style fault injection (tests/chaos.py) on a short seeded schedule: three LiteFS/edgeq
nodes in their own network namespaces, a real Consul lease (ttl 3s), producers and workers
against random nodes, four primary kills, a SIGSTOP, a partition, three Consul session
destroys, a replica kill and a LiteFS restart. Nothing acknowledged may be lost, duplicated
or stuck, and writes may not stop for more than 10 s.

``EDGEQ_CHAOS_SEED`` picks the schedule (default 1), ``EDGEQ_CHAOS_DURABILITY`` the servers'
``--durability`` (default replicated; "local" shows the losses the checker catches).
The JSON report is written to the test's tmp dir (chaos-report.json) and printed.
``scripts/chaos`` runs long schedules."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from support import chaos

pytestmark = pytest.mark.slow

MAX_OUTAGE_SECONDS = 10.0


def require_chaos() -> None:
    missing = chaos.missing_requirements()
    if missing:
        message = "the chaos test needs " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI must run it)", pytrace=False)
        pytest.skip(message)


def assert_clean(report: dict[str, Any], left: list[str], tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    out.write_text(json.dumps(report, indent=2))
    print(f"chaos report ({out}):")
    print(json.dumps(report, indent=2))
    assert left == [], f"left behind: {left}"
    assert "error" not in report, report.get("error")
    keys = ("lost_enqueues", "dup_jobs", "lost_acks", "stuck", "acked_job_id_mismatch", "edge_log_not_drained")
    problems = {k: report[k] for k in keys if report.get(k)}
    problems.update({k: report["examples"][k] for k in problems if k in report["examples"]})
    if report["max_outage_s"] > MAX_OUTAGE_SECONDS:
        worst = max(report["faults"], key=lambda f: f["max_enqueue_gap_s"])
        problems["max_outage_s"] = f"{report['max_outage_s']} (worst fault: {worst})"
    assert not problems, f"chaos found: {json.dumps(problems, indent=2)}"


@pytest.mark.timeout(600)
def test_edge_durability_under_faults_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """``--durability edge``: a replica killed with a backlog in its edge log, the primary
    killed while replicas drain into it, a drainer SIGSTOPped past its drain deadline, plus
    a primary kill and SIGSTOP: every job acknowledged at the edge is stored exactly once,
    under the id it was given (or one GetJob resolves to it), and the edge logs end empty."""
    require_chaos()
    seed = int(os.environ.get("EDGEQ_CHAOS_SEED", "1"))
    try:
        report = chaos.run_chaos(tmp_path / "cluster", seed, schedule=chaos.edge_schedule(random.Random(seed)),
                                 server_args=chaos.server_args("edge"), quiet_seconds=15)
    finally:
        left = chaos.leftovers(tmp_path)
    assert report.get("edge_log_dead") == 0, report.get("edge_log_dead")
    assert_clean(report, left, tmp_path, "chaos-edge-report.json")


@pytest.mark.timeout(600)
def test_short_chaos_schedule_loses_nothing_acknowledged(tmp_path: Path) -> None:
    require_chaos()
    seed = int(os.environ.get("EDGEQ_CHAOS_SEED", "1"))
    schedule = chaos.short_schedule(random.Random(seed))
    try:
        # SIGSTOP, partition and LiteFS restart hit the primary (kills pick by their kind).
        durability = os.environ.get("EDGEQ_CHAOS_DURABILITY", "replicated")
        report = chaos.run_chaos(tmp_path / "cluster", seed, schedule=schedule, primary_bias=1.0,
                                 server_args=chaos.server_args(durability))
    finally:
        left = chaos.leftovers(tmp_path)
    assert_clean(report, left, tmp_path, "chaos-report.json")
