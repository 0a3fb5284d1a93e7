from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ReportPositionsRequest(_message.Message):
    __slots__ = ("node", "txid", "checksum")
    NODE_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    node: str
    txid: int
    checksum: str
    def __init__(self, node: _Optional[str] = ..., txid: _Optional[int] = ..., checksum: _Optional[str] = ...) -> None: ...

class ReportPositionsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
