"""A real EdgeqServer in a background thread with its own asyncio loop, for tests of the
synchronous Python client. ``restart()`` stops it and starts a new server on the same
port and database file (the worker reconnect test)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from edgeq_server.app import EdgeqServer
from edgeq_server.config import Config

T = TypeVar("T")


class ServerThread:
    def __init__(self, db_path: str, **config: Any) -> None:
        self.db_path = db_path
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="edgeq-test-server", daemon=True)
        self.thread.start()
        self.server: EdgeqServer | None = None
        self.port = 0

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> str:
        async def start() -> EdgeqServer:
            server = EdgeqServer(Config(host="127.0.0.1", port=self.port, db_path=self.db_path, **self.config))
            await server.start()
            return server

        self.server = self._run(start())
        self.port = self.server.port
        return self.target

    def stop(self, drain_seconds: float = 0.0, grace_seconds: float = 0.0) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            self._run(server.stop(drain_seconds=drain_seconds, grace_seconds=grace_seconds))

    def restart(self) -> str:
        self.stop()
        return self.start()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
