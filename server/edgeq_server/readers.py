"""Read connections: a small thread pool, one apsw connection per thread, so reads never
block the event loop and never queue behind the writer (WAL lets them run beside it)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from . import db
from .store import Store

T = TypeVar("T")


class Readers:
    def __init__(self, path: str, *, threads: int = 4) -> None:
        self._path = path
        self._local = threading.local()
        self._stores: list[Store] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edgeq-read")

    def _store(self) -> Store:
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = Store(db.connect(self._path))
            self._local.store = store
            with self._lock:
                self._stores.append(store)
        return store

    async def run(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` on a reader thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._store()))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for store in self._stores:
                store.conn.close()
            self._stores.clear()
