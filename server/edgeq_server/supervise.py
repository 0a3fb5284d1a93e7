"""Supervision of every background loop and task a node runs.

A long-lived loop (dispatch, maintenance timers, health, the LiteFS ``/events`` follower's
fallback, position reports, the primary probe, the enqueue buffer's drain, the LiteFS
watchdog) is started with ``Supervisor.loop(name, factory)``: if it raises, the exception
is logged with the loop's name, counted in ``edgeq_loop_restarts_total{loop=...}``, and the
loop is started again after a jittered backoff (0.1 s doubling to 5 s; reset after it ran
30 s without failing). A loop that *returns* while the node runs is restarted too (and
logged): none of them is meant to end. Nothing ends silently while the server runs.

Short-lived tasks (an unclaim after a stream closed, a one-off notification) go through
``Supervisor.task(name, coro)``: their exceptions are logged and counted, never lost in an
unobserved task. ``stop()`` cancels everything and waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from . import metrics

log = logging.getLogger(__name__)

BACKOFF_MIN_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0
#: A loop that ran this long without failing starts again from the shortest backoff.
HEALTHY_SECONDS = 30.0


class Supervisor:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.restarts: dict[str, int] = {}  # loop name -> restarts (tests, GetNodeInfo)

    @property
    def running(self) -> list[str]:
        return sorted(t.get_name() for t in self._tasks if not t.done())

    def loop(
        self, name: str, factory: Callable[[], Awaitable[None]], *, finished: Callable[[], bool] = lambda: False
    ) -> asyncio.Task[None]:
        """Run ``factory()`` until the supervisor stops, restarting it whenever it fails, or
        ends while ``finished()`` is false (a loop that ends on purpose says so there)."""
        return self._spawn(name, self._supervise(name, factory, finished))

    def task(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[None]:
        """Run ``coro`` once; an exception is logged and counted, not lost."""
        return self._spawn(name, self._once(name, coro))

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        if self._stopping:
            coro.close()
            raise RuntimeError(f"supervisor stopped: cannot start {name}")
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _failed(self, name: str) -> None:
        self.restarts[name] = self.restarts.get(name, 0) + 1
        metrics.LOOP_RESTARTS.labels(name).inc()

    async def _once(self, name: str, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s failed", name)
            self._failed(name)

    async def _supervise(self, name: str, factory: Callable[[], Awaitable[None]], finished: Callable[[], bool]) -> None:
        delay = BACKOFF_MIN_SECONDS
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            try:
                await factory()
                if self._stopping or finished():
                    return
                log.error("loop %s ended while the server runs; restarting it", name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("loop %s failed; restarting it", name)
            self._failed(name)
            if loop.time() - started >= HEALTHY_SECONDS:
                delay = BACKOFF_MIN_SECONDS
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, BACKOFF_MAX_SECONDS)

    async def stop(self) -> None:
        """Cancel every loop and task and wait until all have ended."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
