"""The one way tests wait: poll a check until it holds or a deadline passes (``until`` in
threads and sync tests, ``until_async`` with an awaitable check on an event loop)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def until(check: Callable[[], T], timeout: float = 20.0, what: str = "condition", interval: float = 0.02) -> T:
    """The first truthy result of ``check()``; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def until_async(
    check: Callable[[], Awaitable[T]],
    timeout: float = 20.0,  # noqa: ASYNC109 - the poll's bound, as in until()
    what: str = "condition",
    interval: float = 0.01,
) -> T:
    """``until`` for an async ``check``, sleeping on the event loop between polls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
