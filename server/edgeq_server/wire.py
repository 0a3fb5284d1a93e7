"""Request decoding that names the bad field instead of failing opaquely.

protobuf refuses to parse a ``string`` field that is not UTF-8, and gRPC would answer
INTERNAL without saying where. ``safe_deserializer`` catches that and re-reads the bytes
with a lenient copy of our descriptors (every ``string`` turned into ``bytes``), so the
service can answer INVALID_ARGUMENT naming e.g. ``jobs[3].headers``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, message_factory, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from edgeq.v1 import queue_pb2


class Malformed:
    """Stands in for a request that could not be decoded; ``field`` names where."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason


def _relax(messages: Any) -> None:
    for m in messages:
        # Map entries become plain repeated messages: a map key cannot be ``bytes``.
        m.options.ClearField("map_entry")
        for f in m.field:
            if f.type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING:
                f.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
        _relax(m.nested_type)


@cache
def _lenient_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for mod in (duration_pb2, timestamp_pb2, queue_pb2):
        fdp = descriptor_pb2.FileDescriptorProto()
        mod.DESCRIPTOR.CopyToProto(fdp)
        if mod is queue_pb2:
            _relax(fdp.message_type)
        pool.Add(fdp)
    return pool


def _find_bad_utf8(strict: Any, msg: Message, path: str) -> str | None:
    for lf, value in msg.ListFields():
        sf = strict.fields_by_name[lf.name]
        here = f"{path}.{lf.name}" if path else lf.name
        if sf.message_type is not None and sf.message_type.GetOptions().map_entry:
            for entry in value:
                key = entry.key
                if isinstance(key, bytes) and not _utf8(key):
                    return f"{here} (a key)"
                if isinstance(entry.value, bytes) and not _utf8(entry.value) and (
                    sf.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING
                ):
                    return f"{here}[{key.decode() if isinstance(key, bytes) else key!r}]"
            continue
        items = list(value) if sf.is_repeated else [value]
        for i, item in enumerate(items):
            at = f"{here}[{i}]" if sf.is_repeated else here
            if sf.type == FieldDescriptor.TYPE_STRING and not _utf8(item):
                return at
            if sf.type == FieldDescriptor.TYPE_MESSAGE:
                found = _find_bad_utf8(sf.message_type, item, at)
                if found:
                    return found
    return None


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def describe_failure(cls: type[Message], data: bytes) -> Malformed:
    """Explain why ``data`` does not parse as ``cls``."""
    strict = cls.DESCRIPTOR
    try:
        lenient_cls = message_factory.GetMessageClass(_lenient_pool().FindMessageTypeByName(strict.full_name))
        assert strict is not None
        lenient = lenient_cls.FromString(data)
    except DecodeError:
        return Malformed("request", "not a valid protobuf message")
    field = _find_bad_utf8(strict, lenient, "")
    if field is None:
        return Malformed("request", "not a valid protobuf message")
    return Malformed(field, "must be valid UTF-8")


def safe_deserializer(cls: type[Message]) -> Callable[[bytes], Message | Malformed]:
    def parse(data: bytes) -> Message | Malformed:
        try:
            return cls.FromString(data)
        except DecodeError:
            return describe_failure(cls, data)

    return parse
