"""A ledger server's tiles as its log grows: what the writer publishes is what is served, and
nothing past the newest checkpoint; steward-audit reads the same log from the tiles as from
gRPC. On SQLite the tree itself is kept as those tiles, checked at start and on every read."""

from __future__ import annotations

import http.client
import logging
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from audit.sources import GrpcSource, Source, TilesSource
from audit.trust import TrustRoot
from audit.verify import Report, verify
from bench import ledgergen
from ledger import tiles
from ledger.client import InclusionProof, LedgerClient, LedgerRpcError
from ledger.merkle import MerkleTree, leaf_hash, verify_inclusion
from ledger.model import KillScope
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


def test_the_tree_is_kept_as_tiles_checked_at_start_and_on_every_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The SQLite store keeps the tree as tlog-tiles (ledger.tile_store): a restart checks
    every full tile against the entries and rewrites a damaged one; a tile damaged while the
    server runs fails the proof that reads it with DATA_LOSS, never a wrong proof."""
    generated = ledgergen.ledger(3000, progress=False)
    db = tmp_path / "ledger.db"
    shutil.copy(generated.sqlite_path(), db)
    with sqlite3.connect(db) as conn:  # a store from before tiles, whatever the cache holds
        conn.execute("DROP TABLE IF EXISTS log_tiles")
    leaves = [leaf_hash(e) for e in generated.load()]
    tree = MerkleTree.from_leaves(leaves)
    expected = {
        (ref.level, ref.index): tiles.tile_hashes(tree, ref) for ref in tiles.tiles_for_size(3000)
    }

    def stored() -> dict[tuple[int, int], bytes]:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT level, idx, hashes FROM log_tiles").fetchall()
        return {(level, idx): bytes(h) for level, idx, h in rows}

    def damage(level: int, index: int) -> None:
        with sqlite3.connect(db) as conn:
            (hashes,) = conn.execute(
                "SELECT hashes FROM log_tiles WHERE level = ? AND idx = ?", (level, index)
            ).fetchone()
            flipped = bytearray(hashes)
            flipped[100] ^= 0x04
            conn.execute(
                "UPDATE log_tiles SET hashes = ? WHERE level = ? AND idx = ?",
                (bytes(flipped), level, index),
            )

    def start() -> RunningServer:
        return serve(
            LedgerServerConfig(
                store=db,
                checkpoint_key=Cast.create(seed="steward-bench").checkpoint_key,
                checkpoint_every_ms=0,
            )
        )

    # First start on a store from before tiles: every tile written (11 full, 2 partial).
    caplog.set_level(logging.INFO, logger="ledger.server")
    start().stop(None)
    assert stored() == expected
    assert "tiles_rewritten count=11 first=0/0" in caplog.text

    # A flipped bit in a stored tile: the next start finds it and rewrites it.
    caplog.clear()
    damage(0, 5)
    running = start()
    try:
        assert "tiles_rewritten count=1 first=0/5" in caplog.text
        assert stored() == expected
        client = LedgerClient(running.address, timeout=10, retries=0)
        try:
            root = tree.root(3000)
            proof = client.inclusion_proof(1500, 3000)
            assert verify_inclusion(leaves[1500], 1500, 3000, list(proof.proof), root)
            # Damaged under the running server: the proof that needs tile 0/3 fails, closed.
            damage(0, 3)
            with pytest.raises(LedgerRpcError) as raised:
                client.inclusion_proof(900, 3000)
            assert raised.value.code == grpc.StatusCode.DATA_LOSS
            assert "tile 0/3: its hashes hash to" in str(raised.value)
            # Other proofs still come from tiles that are whole.
            proof = client.inclusion_proof(2000, 3000)
            assert verify_inclusion(leaves[2000], 2000, 3000, list(proof.proof), root)
        finally:
            client.close()
    finally:
        running.stop(None)
    caplog.clear()
    start().stop(None)
    assert "tiles_rewritten count=1 first=0/3" in caplog.text
    assert stored() == expected


def test_a_proof_waiting_on_a_tile_read_does_not_hold_up_a_kill_switch(
    server: tuple[RunningServer, Cast], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader of the tree reads tiles back from the store without the writer's lock: a proof
    stuck on the disk (here, a read that waits for the test) leaves appends free to go."""
    running, cast = server
    flow = Flow(cast)
    client = LedgerClient(running.address, timeout=10, retries=0)
    try:
        client.append(flow.genesis())
        client.append_many(flow.grants())
        client.append(flow.policy())
        client.append_many([flow.propose(f"registry.example/m:v{i}") for i in range(300)])
        size = running.ledger.checkpoint(publish_now=True).size
        assert size > 256  # tile 0/0 is full, in the store, and not read back yet

        storage = running.ledger._tile_storage
        assert storage is not None
        entered, release = threading.Event(), threading.Event()
        read_tile = storage.read_tile

        def stuck_read(level: int, index: int) -> bytes | None:
            entered.set()
            release.wait(30)
            return read_tile(level, index)

        monkeypatch.setattr(storage, "read_tile", stuck_read)
        result: list[object] = []
        reader = threading.Thread(
            target=lambda: result.append(client.inclusion_proof(10, size)), daemon=True
        )
        reader.start()
        assert entered.wait(10), "the proof never read tile 0/0 back"
        # The proof is inside the store read; a kill switch is appended all the same.
        receipt = client.append(flow.kill(KillScope("GLOBAL")))
        assert receipt.seq == size
        assert reader.is_alive() and not result
        release.set()
        reader.join(10)
        (proof,) = result
        assert isinstance(proof, InclusionProof)
        entries = [entry for _, entry, _ in running.ledger.read(0)]
        root = MerkleTree.from_leaves(leaf_hash(e) for e in entries[:size]).root()
        assert verify_inclusion(leaf_hash(entries[10]), 10, size, list(proof.proof), root)
    finally:
        client.close()
