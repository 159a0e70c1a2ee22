"""QueryService on a real gRPC server on a loopback port, in the test's process."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager

import grpc
import sqlalchemy as sa

from ledger.query import add_query_service
from steward.v1 import query_pb2_grpc


@contextmanager
def query_service(
    engine: sa.Engine, max_workers: int = 2
) -> Iterator[query_pb2_grpc.QueryServiceStub]:
    """A stub of QueryService reading the projections in ``engine``; server stopped on exit."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    add_query_service(server, engine)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port, "no loopback port for the QueryService"
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield query_pb2_grpc.QueryServiceStub(channel)
    finally:
        channel.close()
        server.stop(grace=None).wait()
