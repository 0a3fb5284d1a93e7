"""edgeq Python client: ``Client`` for producers and admins, ``Worker`` for consumers.

The generated stubs live in ``edgeq.v1`` (``queue_pb2``, ``queue_pb2_grpc``).
"""

__version__ = "0.1.0"
