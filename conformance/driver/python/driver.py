"""The Python SDK's conformance driver: runs one ``edgeq.Worker`` (with ``--aio``: one
``edgeq.aio.Worker`` on an asyncio loop) whose handler does what each job's payload says,
and reports on stdout (see ``conformance/README.md``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import threading
import time
from datetime import timedelta
from typing import Any

import edgeq.aio
from edgeq import Client, Fail, LeasedJob, Retry, Worker

_print_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    with _print_lock:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


class Panic(BaseException):  # stands for a Go panic / a thrown non-Error
    """Not an Exception: what a Python handler can do closest to a panic."""


def handle(job: LeasedJob) -> bytes | None:
    spec = json.loads(job.payload)
    emit("start", job=job.id, attempt=job.attempts)
    try:
        do = spec["do"]
        if do in ("succeed", "error", "fail", "retry", "panic"):
            return handle_outcome(spec)
        if do == "sleep":
            time.sleep(spec["ms"] / 1000)
            return None
        if do == "progress":
            job.report_progress(spec["value"], spec.get("message", ""))
            time.sleep(spec["ms"] / 1000)
            return None
        if do == "wait_cancel":
            if job.cancelled.wait(spec["ms"] / 1000):
                emit("cancelled", job=job.id)
            return None
        raise ValueError(f"unknown behaviour {do!r}")
    finally:
        emit("end", job=job.id)


async def handle_async(job: LeasedJob) -> bytes | None:
    """``handle`` as a coroutine: sleeps are awaited; the worker gives a handler up by
    cancelling its task (and setting ``job.cancelled``)."""
    spec = json.loads(job.payload)
    emit("start", job=job.id, attempt=job.attempts)
    try:
        do = spec["do"]
        if do == "sleep":
            await asyncio.sleep(spec["ms"] / 1000)
            return None
        if do == "progress":
            job.report_progress(spec["value"], spec.get("message", ""))
            await asyncio.sleep(spec["ms"] / 1000)
            return None
        if do == "wait_cancel":
            try:
                await asyncio.sleep(spec["ms"] / 1000)
            except asyncio.CancelledError:
                emit("cancelled", job=job.id)
                raise
            return None
        if do in ("succeed", "error", "fail", "retry", "panic"):
            return handle_outcome(spec)
        raise ValueError(f"unknown behaviour {do!r}")
    finally:
        emit("end", job=job.id)


def handle_outcome(spec: dict[str, Any]) -> bytes | None:
    do = spec["do"]
    if do == "succeed":
        return spec["result"].encode() if "result" in spec else None
    if do == "error":
        raise RuntimeError(spec.get("message", "error"))
    if do == "fail":
        raise Fail(spec.get("message", "fail"))
    if do == "retry":
        raise Retry(spec.get("after_ms", 0) / 1000, spec.get("message", "retry"))
    raise Panic(spec.get("message", "panic"))


async def main_async(args: argparse.Namespace, options: dict[str, Any], drain: float) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with edgeq.aio.Client(args.target) as client:
        worker = edgeq.aio.Worker(client, [args.queue], handle_async, **options).start()
        emit("ready")
        await stop.wait()
        await worker.stop(timeout=drain)
    emit("stopped")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--queue", required=True)
    ap.add_argument("--concurrency", type=int)
    ap.add_argument("--max-in-flight", type=int)
    ap.add_argument("--lease-ms", type=int)
    ap.add_argument("--handler-timeout-ms", type=int)
    ap.add_argument("--drain-ms", type=int)
    ap.add_argument("--aio", action="store_true", help="edgeq.aio.Worker instead of edgeq.Worker")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    options: dict[str, Any] = {}
    if args.concurrency is not None:
        options["concurrency"] = args.concurrency
    if args.max_in_flight is not None:
        options["max_in_flight"] = args.max_in_flight
    if args.lease_ms is not None:
        options["lease_duration"] = timedelta(milliseconds=args.lease_ms)
    if args.handler_timeout_ms is not None:
        options["handler_timeout"] = timedelta(milliseconds=args.handler_timeout_ms)
    drain = args.drain_ms / 1000 if args.drain_ms is not None else 30.0
    if args.aio:
        asyncio.run(main_async(args, options, drain))
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Client(args.target) as client:
        worker = Worker(client, [args.queue], handle, **options).start()
        emit("ready")
        stop.wait()
        worker.stop(timeout=drain)
    emit("stopped")


if __name__ == "__main__":
    main()
