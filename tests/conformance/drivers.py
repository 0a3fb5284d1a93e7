"""Running each SDK's conformance driver (conformance/README.md): build it once, start it
against a server, read its stdout events, stop it with SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.wait import until

ROOT = Path(__file__).resolve().parents[2]
SDKS = ("python", "python-aio", "go", "typescript")
GO_DRIVER = ROOT / ".cache/conformance/go-driver"
_built: set[str] = set()
_build_lock = threading.Lock()


def _missing(what: str) -> None:
    """A missing toolchain fails in CI (a skipped SDK is an untested SDK), skips elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI must test every SDK)")
    pytest.skip(what)


def built(sdk: str) -> None:
    """Make sure ``sdk``'s driver can run (the Go one is compiled once per session)."""
    with _build_lock:
        if sdk in _built:
            return
        if sdk == "go":
            if shutil.which("go") is None:
                _missing("go is not installed")
            GO_DRIVER.parent.mkdir(parents=True, exist_ok=True)
            out = subprocess.run(
                ["go", "build", "-o", str(GO_DRIVER), "."],
                cwd=ROOT / "conformance/driver/go", capture_output=True, text=True, timeout=600,
            )
            assert out.returncode == 0, f"building the Go driver failed:\n{out.stdout}{out.stderr}"
        elif sdk == "typescript":
            if shutil.which("node") is None:
                _missing("node is not installed")
            if not (ROOT / "clients/typescript/node_modules/tsx").exists():
                _missing("clients/typescript/node_modules is missing (npm ci)")
        _built.add(sdk)


def command(sdk: str) -> tuple[list[str], Path]:
    """The driver's argv (without arguments) and its working directory."""
    if sdk == "python":
        return [sys.executable, str(ROOT / "conformance/driver/python/driver.py")], ROOT
    if sdk == "python-aio":  # the same driver on edgeq.aio.Worker
        return [sys.executable, str(ROOT / "conformance/driver/python/driver.py"), "--aio"], ROOT
    if sdk == "go":
        return [str(GO_DRIVER)], ROOT
    if sdk == "typescript":
        ts = ROOT / "conformance/driver/typescript/driver.ts"
        return ["node", "--import", "tsx", str(ts)], ROOT / "clients/typescript"
    raise ValueError(sdk)


class Driver:
    """One running driver process and the events it printed."""

    def __init__(self, sdk: str, target: str, queue: str, **options: int) -> None:
        argv, cwd = command(sdk)
        args = ["--target", target, "--queue", queue]
        for name, value in options.items():
            args += ["--" + name.replace("_", "-"), str(value)]
        self.sdk = sdk
        self.proc = subprocess.Popen(
            argv + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.wait_for("ready", timeout=60)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "garbage", "line": line}
            with self._lock:
                self.events.append(event)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.stderr.append(line)

    def seen(self, event: str, job: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("event") == event and (job is None or e.get("job") == job)]

    def wait_for(
        self, event: str, job: str | None = None, count: int = 1, timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        def check() -> list[dict[str, Any]] | None:
            if self.proc.poll() is not None and len(self.seen(event, job)) < count:
                raise AssertionError(f"{self.sdk} driver exited {self.proc.returncode}:\n{self.log()}")
            got = self.seen(event, job)
            return got if len(got) >= count else None

        return until(check, timeout, f"{count} x {event} {job or ''} from the {self.sdk} driver\n{self.log()}")

    def log(self) -> str:
        with self._lock:
            return "".join(self.stderr[-60:])

    def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM, wait for a clean exit; returns the seconds it took."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        took = time.monotonic() - started
        self._close()
        assert code == 0, f"{self.sdk} driver exited {code} on SIGTERM:\n{self.log()}"
        assert self.seen("stopped"), f"{self.sdk} driver did not report stopped:\n{self.log()}"
        return took

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        for t in self._threads:
            t.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()


class DriverFactory:
    """Starts drivers of one SDK for a scenario; kills any left running at the end."""

    def __init__(self, sdk: str) -> None:
        self.sdk = sdk
        self.started: list[Driver] = []

    def start(self, target: str, queue: str, **options: int) -> Driver:
        d = Driver(self.sdk, target, queue, **options)
        self.started.append(d)
        return d

    def close(self) -> None:
        for d in self.started:
            d.kill()
