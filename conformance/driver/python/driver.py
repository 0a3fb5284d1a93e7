"""The Python SDK's conformance driver: runs one ``edgeq.Worker`` whose handler does what each
job's payload says, and reports on stdout (see ``conformance/README.md``)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from datetime import timedelta
from typing import Any

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
        if do == "succeed":
            return spec["result"].encode() if "result" in spec else None
        if do == "error":
            raise RuntimeError(spec.get("message", "error"))
        if do == "fail":
            raise Fail(spec.get("message", "fail"))
        if do == "retry":
            raise Retry(spec.get("after_ms", 0) / 1000, spec.get("message", "retry"))
        if do == "panic":
            raise Panic(spec.get("message", "panic"))
        if do == "sleep":
            time.sleep(spec["ms"] / 1000)
            return None
        if do == "wait_cancel":
            if job.cancelled.wait(spec["ms"] / 1000):
                emit("cancelled", job=job.id)
            return None
        raise ValueError(f"unknown behaviour {do!r}")
    finally:
        emit("end", job=job.id)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--queue", required=True)
    ap.add_argument("--concurrency", type=int)
    ap.add_argument("--max-in-flight", type=int)
    ap.add_argument("--lease-ms", type=int)
    ap.add_argument("--handler-timeout-ms", type=int)
    ap.add_argument("--drain-ms", type=int)
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
