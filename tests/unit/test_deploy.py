"""The deployment examples. Kubernetes (deploy/kubernetes/edgeq.yaml) is checked strictly
against the Kubernetes API types by deploy/kubernetes/validate (Go, k8s.io/api from the
module proxy): unknown or mistyped fields fail, the probes must be native gRPC, a
PodDisruptionBudget must be there. Fly.io (deploy/fly/fly.toml) must agree with litefs.yml,
the Dockerfile and the server's defaults."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from edgeq_server.config import Config

ROOT = Path(__file__).resolve().parents[2]
VALIDATE = ROOT / "deploy/kubernetes/validate"


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("go") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("go is missing: the Kubernetes example cannot be validated")
        pytest.skip("go is missing")
    return subprocess.run(["go", "run", ".", str(path)], cwd=VALIDATE, capture_output=True, text=True, timeout=600)


def test_the_kubernetes_example_is_valid(tmp_path: Path) -> None:
    ok = validate(ROOT / "deploy/kubernetes/edgeq.yaml")
    assert ok.returncode == 0, ok.stderr
    assert "5 objects valid" in ok.stdout


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (("periodSeconds: 2\n", "periodSecond: 2\n"), 'unknown field "periodSecond"'),
        (("grpc: {port: 50051}\n", "tcpSocket: {port: 50051}\n"), "native gRPC probes"),
        (("kind: PodDisruptionBudget", "kind: PodDisruptionBudgets"), "unknown kind"),
    ],
)
def test_the_validator_refuses_a_broken_manifest(tmp_path: Path, change: tuple[str, str], error: str) -> None:
    text = (ROOT / "deploy/kubernetes/edgeq.yaml").read_text()
    assert change[0] in text
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace(change[0], change[1], 1))
    out = validate(broken)
    assert out.returncode == 1 and error in out.stderr, out.stderr


# ---------------------------------------------------------------------- Fly.io


def _litefs_exec_flag(text: str, flag: str) -> str:
    match = re.search(rf"{re.escape(flag)} (\S+)", text)
    assert match is not None, f"litefs.yml's exec has no {flag}"
    return match.group(1)


def test_the_fly_example_agrees_with_litefs_yml_the_dockerfile_and_the_servers_defaults() -> None:
    fly = tomllib.loads((ROOT / "deploy/fly/fly.toml").read_text())
    litefs = (ROOT / "litefs.yml").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    port = int(_litefs_exec_flag(litefs, "--port"))
    services = fly["services"]
    assert [s["internal_port"] for s in services] == [port]
    assert all(p["port"] != 20202 and s["internal_port"] != 20202 for s in services for p in s["ports"])
    (grpc_port,) = services[0]["ports"]
    assert grpc_port["handlers"] == ["tls"] and grpc_port["tls_options"]["alpn"] == ["h2"]  # HTTP/2 passes
    assert services[0]["auto_stop_machines"] == "off" and services[0]["auto_start_machines"] is False
    data_dir = re.search(r'^data:\n(?:  #.*\n)*  dir: "([^"]+)"', litefs, re.M)
    assert data_dir is not None and fly["mounts"]["destination"] == data_dir.group(1)
    assert _litefs_exec_flag(litefs, "--outbox-path").startswith(data_dir.group(1) + "/")  # on the volume
    assert str(fly["metrics"]["port"]) == _litefs_exec_flag(litefs, "--metrics-address").rsplit(":", 1)[1]
    assert fly["primary_region"] and "candidate: ${FLY_REGION == PRIMARY_REGION}" in litefs
    cfg = Config()
    kill = int(fly["kill_timeout"].removesuffix("s"))
    assert fly["kill_signal"] == "SIGTERM" and kill >= cfg.drain_seconds + cfg.grace_seconds + 5
    last_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert 'ENTRYPOINT ["litefs", "mount"]' in last_stage and fly["build"]["dockerfile"] == "Dockerfile"
    assert "deploy/fly/README.md" in (ROOT / "docs/operations.md").read_text()
