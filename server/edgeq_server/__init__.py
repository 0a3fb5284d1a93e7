"""edgeq server: a durable gRPC job queue on SQLite, replicated by LiteFS.

This package owns the server side. Public entry points: ``edgeq_server.app.build_server``
(assemble a server) and ``edgeq_server.cli.main`` (the ``edgeq`` command).
"""

__version__ = "0.1.0"
