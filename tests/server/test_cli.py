"""The ``edgeq`` client commands against a real server process: --version, --output
table|json|ndjson (payloads as text when UTF-8), bulk cancel/retry by queue and state with a
count and --yes, ``health`` (exit code from grpc.health.v1), shell completion, and every
flag as an EDGEQ_* variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.procs import ServerProcess

from edgeq import Client, JobState
from edgeq_server import __version__


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("cli") / "cli.db")
    try:
        yield srv
    finally:
        srv.close()


def edgeq(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEQ_")}
    return subprocess.run(
        [sys.executable, "-m", "edgeq_server", *args], capture_output=True, text=True, timeout=60,
        env={**clean, **(env or {})}, input=stdin,
    )


def test_version() -> None:
    out = edgeq("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"edgeq {__version__}"


def test_output_formats_and_payloads_as_text(server: ServerProcess) -> None:
    t = server.target
    with Client(t) as c:
        text = c.enqueue("fmt", "héllo wörld".encode()).job_id
        binary = c.enqueue("fmt", b"\xff\xfe\x00").job_id
    listed = edgeq("--server", t, "jobs", "--queue", "fmt", "-o", "json")
    jobs = {j["id"]: j for j in json.loads(listed.stdout)}  # one JSON array
    assert jobs[text]["payload"] == "héllo wörld"
    assert jobs[binary]["payload_base64"] == "//4A" and "payload" not in jobs[binary]
    lines = edgeq("--server", t, "-o", "ndjson", "jobs", "--queue", "fmt").stdout.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [text, binary]
    table = edgeq("--server", t, "jobs", "--queue", "fmt", "--output", "table").stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "QUEUE", "STATE", "ATTEMPTS"]
    assert text in table[1] and "pending" in table[1] and "héllo wörld" in table[1]
    assert "base64://4A" in table[2]
    stats = edgeq("--server", t, "stats", "fmt", "-o", "table").stdout.splitlines()
    assert stats[0].split()[:3] == ["QUEUE", "PENDING", "SCHEDULED"] and stats[1].split()[:3] == ["fmt", "2", "0"]
    one = json.loads(edgeq("--server", t, "job", text).stdout)  # not a terminal: JSON by default
    assert one["job"]["payload"] == "héllo wörld"


def test_bulk_cancel_and_retry_count_and_need_yes(server: ServerProcess) -> None:
    t = server.target
    with Client(t) as c:
        ids = [c.enqueue("bulk", b"x").job_id for _ in range(5)]
        other = c.enqueue("bulk-other", b"x").job_id
    refused = edgeq("--server", t, "cancel", "--queue", "bulk")  # stdin is no terminal: must say --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr
    with Client(t) as c:
        assert all(c.get(i).state is JobState.PENDING for i in ids)
    done = edgeq("--server", t, "cancel", "--queue", "bulk", "--state", "pending", "--yes", "-o", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"queue": "bulk", "state": "pending", "matched": 5, "cancelled": 5, "calls": 1}
    again = edgeq("--server", t, "retry", "--queue", "bulk", "--state", "cancelled", "-y", "-o", "json")
    assert json.loads(again.stdout)["retried"] == 5
    with Client(t) as c:
        assert all(c.get(i).state is JobState.PENDING for i in ids)
        assert c.get(other).state is JobState.PENDING  # another queue is untouched
    # A time range: only jobs created in it (server-side, RetryJobs/CancelJobs in bounded calls).
    with Client(t) as c:
        created = [c.get(i).created_at for i in ids]
    cut = created[2].isoformat()
    later = edgeq("--server", t, "cancel", "--queue", "bulk", "--created-after", cut, "-y", "-o", "json")
    assert json.loads(later.stdout)["cancelled"] == 3, later.stderr
    with Client(t) as c:
        assert [c.get(i).state for i in ids] == [JobState.PENDING] * 2 + [JobState.CANCELLED] * 3
    bad = edgeq("--server", t, "retry", "--queue", "bulk", "--created-before", "yesterday-ish")
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr
    both = edgeq("--server", t, "cancel", ids[0], "--queue", "bulk")
    assert both.returncode == 2 and "not both" in both.stderr
    neither = edgeq("--server", t, "retry")
    assert neither.returncode == 2 and "--queue" in neither.stderr


def test_schedules_from_the_cli(server: ServerProcess) -> None:
    t = server.target
    made = edgeq("--server", t, "schedule", "set", "digest", "--queue", "cli-cron", "--cron", "*/5 * * * *",
                 "--tz", "Asia/Tokyo", "--payload", "hello", "--header", "k=v", "--overlap", "skip", "-o", "json")
    assert made.returncode == 0, made.stderr
    sch = json.loads(made.stdout)
    assert (sch["name"], sch["time_zone"], sch["overlap"]) == ("digest", "Asia/Tokyo", "OVERLAP_POLICY_SKIP")
    listed = edgeq("--server", t, "schedule", "list", "-o", "table").stdout.splitlines()
    assert listed[0].split()[:3] == ["NAME", "QUEUE", "CRON"] and listed[1].split()[:2] == ["digest", "cli-cron"]
    assert json.loads(edgeq("--server", t, "schedule", "pause", "digest", "-o", "json").stdout)["paused"]
    assert "paused" not in json.loads(edgeq("--server", t, "schedule", "resume", "digest", "-o", "json").stdout)
    bad = edgeq("--server", t, "schedule", "set", "x", "--queue", "q", "--cron", "nope")
    assert bad.returncode != 0 and "schedule.cron" in bad.stderr
    assert json.loads(edgeq("--server", t, "schedule", "delete", "digest", "-o", "json").stdout)["deleted"]


def test_rate_limit_from_the_cli(server: ServerProcess) -> None:
    t = server.target
    assert edgeq("--server", t, "rate-limit", "cli-rl", "50", "--per", "10").returncode == 0
    (stats,) = json.loads(edgeq("--server", t, "stats", "cli-rl", "-o", "json").stdout)["stats"]
    assert (stats["rate_limit_jobs"], stats["rate_limit_period"]) == ("50", "10s")
    bad = edgeq("--server", t, "rate-limit", "cli-rl", "-3")
    assert bad.returncode != 0 and "jobs" in bad.stderr


def test_fair_groups_from_the_cli(server: ServerProcess) -> None:
    t = server.target
    made = edgeq("--server", t, "enqueue", "cli-fair", "hello", "--group", "tenant-a", "-o", "json")
    assert made.returncode == 0, made.stderr
    (result,) = json.loads(made.stdout)["results"]
    with Client(t) as c:
        assert c.get(result["job_id"]).group == "tenant-a"
    assert edgeq("--server", t, "group-weight", "cli-fair", "tenant-a", "4", "-o", "json").returncode == 0
    (group,) = json.loads(edgeq("--server", t, "groups", "cli-fair", "-o", "json").stdout)  # the idle default
    assert (group["group"], group["weight"], group["pending"]) == ("tenant-a", 4, "1")  # group is not listed
    table = edgeq("--server", t, "groups", "cli-fair", "-o", "table").stdout.splitlines()
    assert table[0].split() == ["GROUP", "WEIGHT", "PENDING", "RUNNING"]
    assert table[1].split() == ["tenant-a", "4", "1", "0"]
    bad = edgeq("--server", t, "group-weight", "cli-fair", "tenant-a", "0")
    assert bad.returncode != 0 and "weight" in bad.stderr


def test_health_exit_code_follows_grpc_health(server: ServerProcess) -> None:
    ok = edgeq("--server", server.target, "health")
    assert ok.returncode == 0 and json.loads(ok.stdout)["status"] == "SERVING"
    unknown = edgeq("--server", server.target, "health", "--service", "no.such.Service")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    down = edgeq("--server", "127.0.0.1:1", "--timeout", "2", "health")
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr


def test_every_client_flag_reads_its_environment_variable(server: ServerProcess) -> None:
    with Client(server.target) as c:
        for _ in range(3):
            c.enqueue("envq", b"x")
    env = {"EDGEQ_SERVER": server.target, "EDGEQ_OUTPUT": "ndjson", "EDGEQ_LIMIT": "2", "EDGEQ_QUEUE": "envq"}
    out = edgeq("jobs", env=env)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 2  # --limit 2, --queue envq, ndjson: all from the environment
    flag_wins = edgeq("jobs", "--limit", "3", env=env)
    assert len(flag_wins.stdout.splitlines()) == 3


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_shell_completion_lists_the_commands(shell: str, tmp_path: Path) -> None:
    out = edgeq("completion", shell)
    assert out.returncode == 0
    for word in ("enqueue", "jobs", "health", "--output"):
        assert word in out.stdout
    if shell == "bash":
        script = tmp_path / "edgeq.bash"
        script.write_text(out.stdout)
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_on_off_settings_parse_as_booleans_from_flags_and_environment() -> None:
    from edgeq_server.cli import build_parser
    from edgeq_server.config import Config

    parser = build_parser()
    assert parser.parse_args(["serve", "--tracing"]).tracing is True
    assert parser.parse_args(["serve", "--no-tracing"]).tracing is False
    assert parser.parse_args(["serve"]).tracing is None  # the environment or the default decides
    assert Config.from_env({"EDGEQ_TRACING": "false"}).tracing is False  # not bool("false")
    assert Config.from_env({"EDGEQ_TRACING": "ON"}).tracing is True
    with pytest.raises(ValueError, match="EDGEQ_TRACING"):
        Config.from_env({"EDGEQ_TRACING": "maybe"})
