"""The Kubernetes example (deploy/kubernetes/edgeq.yaml) is checked strictly against the
Kubernetes API types by deploy/kubernetes/validate (Go, k8s.io/api from the module proxy):
unknown or mistyped fields fail, the probes must be native gRPC, a PodDisruptionBudget must
be there."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

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
