"""The dashboard's pure parts: rates from successive queue samples, how a payload is shown,
and which redirect targets it follows (no open redirect)."""

from __future__ import annotations

import collections

from edgeq.v1 import queue_pb2 as pb
from edgeq_server.dashboard import RATE_SPAN_SECONDS, Dashboard, Samples, _local, _show, rates


def stats(**queues: tuple[int, int]) -> list[pb.QueueStats]:
    """queue=(pending, completed)."""
    return [pb.QueueStats(queue=q, pending=p, completed=c) for q, (p, c) in queues.items()]


def test_rates_need_two_samples_a_second_apart_then_count_per_minute() -> None:
    samples: Samples = collections.deque()
    assert rates(samples, stats(a=(10, 0)), now=100.0) == {}
    assert rates(samples, stats(a=(10, 0)), now=100.5) == {}
    # 30 s later: 20 more jobs, 5 of them completed (total = pending + completed).
    got = rates(samples, stats(a=(25, 5), b=(1, 0)), now=130.0)
    assert got == {"a": (40.0, 10.0)}  # b was not in the oldest sample: no rate yet
    # A queue whose finished jobs were deleted by retention does not show a negative rate.
    assert rates(samples, stats(a=(0, 0)), now=131.0)["a"] == (0.0, 0.0)


def test_rates_measure_over_the_last_minute_only() -> None:
    samples: Samples = collections.deque()
    rates(samples, stats(a=(0, 0)), now=0.0)
    rates(samples, stats(a=(600, 0)), now=10.0)  # a burst long ago
    rates(samples, stats(a=(600, 0)), now=10.0 + RATE_SPAN_SECONDS)
    got = rates(samples, stats(a=(600, 60)), now=20.0 + RATE_SPAN_SECONDS)
    # Measured from t=10 (the newest sample at least a minute old), not t=0: the burst
    # before it does not count; 60 jobs (60 completed) in 70 s.
    assert got == {"a": (60 * 60 / 70, 60 * 60 / 70)}
    assert [t for t, _ in samples] == [10.0, 10.0 + RATE_SPAN_SECONDS, 20.0 + RATE_SPAN_SECONDS]


def test_payloads_show_as_pretty_json_text_or_hex() -> None:
    assert _show(b'{"a":[1,2]}') == ("json", '{\n  "a": [\n    1,\n    2\n  ]\n}')
    assert _show("héllo <b>".encode()) == ("text", "héllo <b>")
    assert _show(b"\xff\x00\x01") == ("hex", "ff 00 01")
    assert _show(b"") == ("empty", "")


def test_only_local_paths_are_followed_after_sign_in_and_actions() -> None:
    assert _local("/jobs?queue=a") == "/jobs?queue=a"
    for bad in ("//evil.example/x", "https://evil.example/", "evil", "/\\evil", ""):
        assert _local(bad) == "/queues"
    back = Dashboard._back({"back": "//evil.example/"}, "/dead", notice="ok")
    assert back.location == "/dead?notice=ok"
    back = Dashboard._back({"back": "/dead?queue=a&error=old"}, "/dead", notice="done")
    assert back.location == "/dead?queue=a&notice=done"
