"""A ledger server's tiles as its log grows: what the writer publishes is what is served, and
nothing past the newest checkpoint; steward-audit reads the same log from the tiles as from
gRPC."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.sources import GrpcSource, Source, TilesSource
from audit.trust import TrustRoot
from audit.verify import Report, verify
from ledger.client import LedgerClient
from ledger.scenario import Cast, Flow
from ledger.server import LedgerServerConfig, RunningServer, serve
from tests.audit_tamper import Builder
from tests.helpers.tiles import tiled_log


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[RunningServer, Cast]]:
    cast = Cast.create(seed="audit-online")  # tests.audit_tamper's trust root pins these keys
    running = serve(
        LedgerServerConfig(
            store=tmp_path / "ledger.db",
            checkpoint_key=cast.checkpoint_key,
            checkpoint_every_ms=0,
            checkpoint_every_entries=1000,  # checkpoints only when the test asks
            tiles_listen="127.0.0.1:0",
        )
    )
    try:
        yield running, cast
    finally:
        running.stop(None)


def _get(running: RunningServer, path: str) -> tuple[int, bytes]:
    assert running.tiles_server is not None
    conn = http.client.HTTPConnection("127.0.0.1", running.tiles_server.port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _audit(source: Source) -> Report:
    try:
        checkpoints = source.checkpoints()
        trust = TrustRoot.from_json(Builder(seed="audit-online").trust())
        return verify(source.records(), trust, checkpoints)
    finally:
        source.close()


def test_the_tiles_follow_the_published_checkpoints(server: tuple[RunningServer, Cast]) -> None:
    running, cast = server
    assert running.tiles_server is not None
    assert running.tiles_url == f"http://127.0.0.1:{running.tiles_server.port}/"
    status, body = _get(running, "/checkpoint")
    assert (status, body) == (404, b"no checkpoint published yet\n")

    flow = Flow(cast)
    client = LedgerClient(running.address, timeout=10, retries=0)
    try:
        client.append(flow.genesis())
        for grant in flow.grants():
            client.append(grant)
        size = running.ledger.checkpoint(publish_now=True).size
        note = running.ledger.checkpoint().note
        client.append(flow.policy())  # stored, not yet under a checkpoint
    finally:
        client.close()

    entries = [entry for _, entry, _ in running.ledger.read(0)]
    assert len(entries) == size + 1
    assert _get(running, "/checkpoint") == (200, note.encode())
    for path, data in tiled_log(entries[:size], note).items():
        assert _get(running, "/" + path) == (200, data), path
    beyond = f"/tile/0/000.p/{size + 1}"
    status, body = _get(running, beyond)
    assert status == 404 and f"tree size {size}" in body.decode()

    later = running.ledger.checkpoint(publish_now=True)
    assert later.size == size + 1
    assert _get(running, beyond)[0] == 200
    assert _get(running, "/checkpoint") == (200, later.note.encode())
    assert _get(running, f"/tile/0/000.p/{size}")[0] == 200  # the older size's tile stays

    from_tiles = _audit(TilesSource(running.tiles_url or ""))
    from_grpc = _audit(GrpcSource(running.address))
    assert from_tiles.findings == from_grpc.findings == []
    assert from_tiles.entries == from_grpc.entries == size + 1
    assert from_tiles.verified_size == from_grpc.verified_size == size + 1
