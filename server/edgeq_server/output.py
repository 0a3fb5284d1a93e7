"""How the ``edgeq`` client commands print what the server answered: ``table`` (the default on
a terminal), ``json`` (one document; a list for listings) or ``ndjson`` (one compact object per
line). Field names are the proto's; a job's payload and result are shown as text when they
are UTF-8, else as base64 under ``payload_base64`` / ``result_base64``."""

from __future__ import annotations

import base64
import binascii
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

FORMATS = ("table", "json", "ndjson")
_BYTES_FIELDS = ("payload", "result")
_PREVIEW = 40  # characters of a payload in a table


def default_format(stream: TextIO = sys.stdout) -> str:
    return "table" if stream.isatty() else "json"


def _text_bytes(d: dict[str, Any]) -> dict[str, Any]:
    """A job's bytes fields as text when they decode as UTF-8 (MessageToDict gives base64)."""
    for name in _BYTES_FIELDS:
        if name not in d:
            continue
        try:
            raw = base64.b64decode(d[name], validate=True)
            d[name] = raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            d[f"{name}_base64"] = d.pop(name)
    return d


def to_dict(msg: Message) -> dict[str, Any]:
    """The message as the JSON output shows it (proto field names, enum names)."""
    d: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    for key in ("job", "jobs"):  # GetJob / CancelJob / RetryJob answers, ListJobs pages
        if isinstance(d.get(key), dict):
            _text_bytes(d[key])
        elif isinstance(d.get(key), list):
            for job in d[key]:
                _text_bytes(job)
    if "queue" in d and "state" in d and "id" in d:  # a bare Job
        _text_bytes(d)
    return d


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    text = str(value).replace("\n", "\\n")
    return text if len(text) <= _PREVIEW else text[: _PREVIEW - 1] + "…"


def _short_state(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("JOB_STATE_"):
        return value.removeprefix("JOB_STATE_").lower()
    return value


#: Columns whose value the proto leaves out when it is zero / false.
_ZERO = {
    "attempts": 0, "priority": 0, "pending": 0, "scheduled": 0, "running": 0, "completed": 0, "failed": 0,
    "cancelled": 0, "accepted": 0, "paused": False, "duplicate": False,
}


def _column(row: dict[str, Any], name: str) -> Any:
    if name in row:
        return row[name]
    if f"{name}_base64" in row:  # bytes that are not UTF-8
        return "base64:" + row[f"{name}_base64"]
    return _ZERO.get(name, "")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: TextIO) -> None:
    """Aligned columns (header in capitals); fields the proto left out print as 0 / false / empty."""
    cells = [[_cell(_short_state(_column(r, c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _fields(d: dict[str, Any], out: TextIO, indent: str = "") -> None:
    """One ``key: value`` line per field; nested messages indented."""
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.write(f"{indent}{key}:\n")
            _fields(value, out, indent + "  ")
        else:
            out.write(f"{indent}{key}: {_cell(_short_state(value)) if not isinstance(value, str) else value}\n")


JOB_COLUMNS = ("id", "queue", "state", "attempts", "max_attempts", "priority", "run_at", "payload", "error_message")
GROUP_COLUMNS = ("group", "weight", "pending", "running")
SCHEDULE_COLUMNS = ("name", "queue", "cron", "time_zone", "paused", "next_run_at", "last_run_at", "last_job_id")
STATS_COLUMNS = (
    "queue", "pending", "scheduled", "running", "completed", "failed", "cancelled", "accepted",
    "oldest_pending_age", "paused",
)


class Printer:
    """Prints answers in one format; ``rows`` and ``one`` are the two shapes commands have."""

    def __init__(self, fmt: str, out: TextIO = sys.stdout) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"output must be one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.out = out

    def one(self, msg: Message | dict[str, Any]) -> None:
        d = msg if isinstance(msg, dict) else to_dict(msg)
        if self.fmt == "json":
            self.out.write(json.dumps(d, indent=2, ensure_ascii=False) + "\n")
        elif self.fmt == "ndjson":
            self.out.write(json.dumps(d, separators=(",", ":"), ensure_ascii=False) + "\n")
        elif "stats" in d and isinstance(d["stats"], list):
            table(d["stats"], STATS_COLUMNS, self.out)
        elif "results" in d and isinstance(d["results"], list):
            table(d["results"], ("job_id", "duplicate", "idempotency_key"), self.out)
            _fields({k: v for k, v in d.items() if k != "results"}, self.out)
        else:
            _fields(d.get("job", d) if set(d) <= {"job", "txid"} else d, self.out)

    def rows(self, items: Iterable[Message | dict[str, Any]], columns: Sequence[str] = JOB_COLUMNS) -> int:
        """A listing: a table, one JSON array, or one line per item. Returns how many."""
        dicts = [i if isinstance(i, dict) else to_dict(i) for i in items]
        if self.fmt == "json":
            self.out.write(json.dumps(dicts, indent=2, ensure_ascii=False) + "\n")
        elif self.fmt == "ndjson":
            for d in dicts:
                self.out.write(json.dumps(d, separators=(",", ":"), ensure_ascii=False) + "\n")
        else:
            table(dicts, columns, self.out)
        return len(dicts)
