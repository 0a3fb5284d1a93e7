"""Log setup for ``edgeq serve``: plain text, or one JSON object per line (``--log-format
json``, python-json-logger) with the fields a log search needs — time, level, logger,
message, and when known the RPC's W3C trace id (``traceparent``) and a job's id and queue.

``TRACE_ID`` holds the trace id of the RPC being handled (set by the handler wrapper in
``app.py``; asyncio gives every handler its own context, and the writer runs post-commit
bookkeeping in the submitter's context). Job events pass ``extra=job_fields(...)``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

FORMATS = ("text", "json")
TRACE_ID: ContextVar[str] = ContextVar("edgeq_trace_id", default="")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def trace_id(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The trace id of a W3C ``traceparent`` in gRPC metadata ("" when absent or malformed)."""
    for key, value in metadata or ():
        if key == "traceparent" and isinstance(value, str):
            m = _TRACEPARENT.match(value.strip().lower())
            if m and m.group(1) != "0" * 32:
                return m.group(1)
    return ""


def job_fields(job_id: str, queue: str) -> dict[str, str]:
    """``extra=`` for a log line about one job."""
    return {"job_id": job_id, "queue": queue}


class _TraceFilter(logging.Filter):
    """Stamps every record with the current RPC's trace id (if any)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "trace_id", ""):
            record.trace_id = TRACE_ID.get()
        return True


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={getattr(record, k)}" for k in ("job_id", "queue", "trace_id") if getattr(record, k, "")]
        return f"{line} [{' '.join(extras)}]" if extras else line


def configure(level: str, fmt: str = "text", stream: Any = None) -> logging.Handler:
    """The root logger writes to ``stream`` (stderr) in ``fmt``; returns the handler."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(
            "{asctime}{levelname}{name}{message}", style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        ))
    else:
        handler.setFormatter(_Text("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_TraceFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
