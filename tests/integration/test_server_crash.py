"""SIGKILL the ledger server process between and during appends, restart it on the same file.

Every acknowledged event must be in the log exactly once, the chain and the Merkle tree must
verify, and retrying the same signed events must return their original receipts.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ledger import tiles
from ledger.checkpoint import verify_checkpoint
from ledger.client import CheckpointInfo, LedgerClient, LedgerRpcError
from ledger.core import Receipt
from ledger.formats import SignedEvent, decode_body
from ledger.merkle import MerkleTree, leaf_hash, verify_consistency
from ledger.scenario import Cast, Flow
from ledger.store.sqlite import SQLiteLogStore
from tests.helpers.keys import write_checkpoint_key
from tests.helpers.ledger_server import LedgerServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[LedgerServerProcess, Cast]]:
    cast = Cast.create()
    key = write_checkpoint_key(cast, tmp_path)
    proc = LedgerServerProcess(
        [
            "-m",
            "ledger.server",
            "--db",
            str(tmp_path / "ledger.db"),
            "--checkpoint-key",
            str(key),
            "--checkpoint-every-entries",
            "4",
            "--checkpoint-every-ms",
            "100",
        ],
        tmp_path,
    )
    try:
        yield proc, cast
    finally:
        proc.stop()


def _verify_log(
    client: LedgerClient,
    acked: dict[bytes, tuple[SignedEvent, Receipt]],
    earlier: list[CheckpointInfo],
) -> None:
    entries = list(client.read(0))  # the client checks seq order and every prev link
    ids = [e.body.event_id for e in entries]
    assert len(ids) == len(set(ids)), "an event is in the log twice"
    by_id = {e.body.event_id: e for e in entries}
    for event_id, (_event, receipt) in acked.items():
        e = by_id[event_id]  # every acknowledged event is there
        assert (e.seq, e.leaf_hash, e.entry.received_at) == (
            receipt.seq,
            receipt.leaf_hash,
            receipt.received_at,
        )
    tree = MerkleTree.from_leaves(e.leaf_hash for e in entries)
    assert client.head().root == tree.root()
    latest = client.checkpoint(publish_now=True)
    vkey = client.vkey()
    assert verify_checkpoint(latest.note, vkey).root == tree.root()
    for cp in earlier:  # checkpoints signed before a crash stay consistent with the new head
        proof = client.consistency_proof(cp.size, latest.size)
        assert verify_consistency(cp.size, latest.size, list(proof.proof), cp.root, latest.root)


def _writer(
    client: LedgerClient,
    flow: Flow,
    tag: str,
    stop: threading.Event,
    in_flight: list[SignedEvent],
    record: Callable[[SignedEvent, Receipt], None],
) -> None:
    """Append until stopped or until the server dies; single appends and small batches."""
    i = 0
    while not stop.is_set():
        batch = [flow.propose(f"registry.example/m:{tag}-{i}", deployment=f"d{i % 3}")]
        if i % 4 == 3:
            batch.append(flow.propose(f"registry.example/m:{tag}-{i}b"))
        in_flight.extend(batch)
        try:
            if len(batch) == 1:
                record(batch[0], client.append(batch[0]))
            else:
                for event, result in zip(batch, client.append_many(batch), strict=True):
                    assert isinstance(result, Receipt)
                    record(event, result)
        except LedgerRpcError as exc:
            assert exc.retryable, exc  # only the kill may interrupt
            return
        i += 1


def test_sigkill_between_and_during_appends(server: tuple[LedgerServerProcess, Cast]) -> None:
    proc, cast = server
    flow = Flow(cast)
    acked: dict[bytes, tuple[SignedEvent, Receipt]] = {}

    def record(event: SignedEvent, receipt: Receipt) -> None:
        acked[decode_body(event.body).event_id] = (event, receipt)

    # Round 1: set up, then SIGKILL right after an acknowledged append.
    with LedgerClient(proc.start()) as client:
        for event in [flow.genesis(), *flow.grants(), flow.policy()]:
            record(event, client.append(event))
        checkpoints = client.checkpoints()
    proc.kill()

    rng = random.Random(7)
    for round_ in range(3):
        # Restart on the same file; then a writer appends until the process is killed under it.
        with LedgerClient(proc.start(), retries=0, timeout=5) as client:
            _verify_log(client, acked, checkpoints)
            in_flight: list[SignedEvent] = []
            stop = threading.Event()
            args = (client, flow, f"r{round_}", stop, in_flight, record)
            t = threading.Thread(target=_writer, args=args, daemon=True)
            t.start()
            time.sleep(0.2 + rng.random() * 0.3)
            proc.kill()
            stop.set()
            t.join(timeout=30)
            assert not t.is_alive()

        # Restart: every acknowledged event is there once, the chain verifies, and retrying
        # every event we ever sent (acknowledged or not) gives each exactly one place.
        with LedgerClient(proc.start()) as client:
            _verify_log(client, acked, checkpoints)
            for event_id, (event, receipt) in list(acked.items()):
                assert client.append(event) == replace(receipt, duplicate=True), event_id.hex()
            for event in in_flight:
                event_id = decode_body(event.body).event_id
                if event_id not in acked:
                    record(event, client.append(event))  # lost in the crash, or stored unanswered
            _verify_log(client, acked, checkpoints)
            checkpoints = client.checkpoints()
            assert client.head().size == len(acked)
        proc.kill()
    log = (proc.workdir / "server.log").read_text()
    assert log.count("listening on") == 7 and "replay_done" in log
    # The tree kept as tiles (ledger.tile_store): a kill may land between a batch and its
    # tiles, so a tile may be missing (the next start writes it), never wrong.
    store = SQLiteLogStore(proc.workdir / "ledger.db", read_only=True)
    try:
        leaves = [leaf_hash(r.value) for r in store.read(0)]
        tree = MerkleTree.from_leaves(leaves)
        assert len(leaves) == len(acked) > 256  # at least one full tile was written
        stored = 0
        for ref in tiles.tiles_for_size(len(leaves)):
            assert ref.level is not None
            held = store.read_tile(ref.level, ref.index)
            if held is not None and not ref.is_partial:
                assert held == tiles.tile_hashes(tree, ref), ref
                stored += 1
        assert stored >= 1
    finally:
        store.close()
