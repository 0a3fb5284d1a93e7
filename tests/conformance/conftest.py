"""Fixtures of the worker conformance suite: a real server process and each SDK's driver."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the support package

from drivers import SDKS, DriverFactory, built
from support.procs import ServerProcess


@pytest.fixture(params=SDKS)
def sdk(request: pytest.FixtureRequest) -> str:
    built(request.param)  # builds (or fails naming what is missing) before the scenario starts
    return str(request.param)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "conformance.db")
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def drivers(sdk: str) -> Iterator[DriverFactory]:
    factory = DriverFactory(sdk)
    try:
        yield factory
    finally:
        factory.close()
