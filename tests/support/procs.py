"""Helpers for tests that run the real ``edgeq serve`` process."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path


class ServerProcess:
    """``python -m edgeq_server serve`` on a free port; stopped (or killed) by the test."""

    def __init__(self, db: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeq_server", "serve", "--port", "0", "--db-path", str(db),
             "--log-level", "WARNING", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.output: list[str] = []
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        for line in self.proc.stdout:
            self.output.append(line)
            m = re.search(r"listening on ([\d.]+):(\d+)", line)
            if m:
                self.target = f"{m.group(1)}:{m.group(2)}"
                break
            if time.monotonic() > deadline:
                break
        else:
            self.proc.kill()
            self.close()
            raise RuntimeError("server did not start:\n" + "".join(self.output))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self.close()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if hasattr(self, "_reader"):
            self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
