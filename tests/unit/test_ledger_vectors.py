"""The committed vectors verify with the ledger's own code and are up to date."""

from __future__ import annotations

import json
from pathlib import Path

from ledger.checkpoint import verify_checkpoint
from ledger.formats import PAYLOAD_TYPES, decode_log_entry, signed_bytes
from ledger.keys import PublicKey
from ledger.merkle import MerkleTree, verify_consistency, verify_inclusion
from ledger.rules import check
from ledger.state import LedgerState
from tests.vectors import generate

DOC = json.loads(generate.VECTORS.read_text())
REPO = Path(__file__).resolve().parents[2]


def test_vectors_are_up_to_date() -> None:
    assert generate.render() == generate.VECTORS.read_text(), "run python -m tests.vectors.generate"


def test_format_doc_walkthrough_matches_the_code() -> None:
    assert generate.walkthrough() in (REPO / "docs" / "FORMAT.md").read_text()


def test_vectors_cover_every_event_type_and_at_least_20_entries() -> None:
    assert len(DOC["entries"]) >= 20
    assert {e["type"] for e in DOC["entries"]} == set(PAYLOAD_TYPES)


def test_entries_chain_sign_and_fold() -> None:
    keys = {k["key_id"]: PublicKey.from_pem(k["public_pem"].encode()) for k in DOC["keys"]}
    state = LedgerState()
    prev = bytes(32)
    tree = MerkleTree()
    for i, v in enumerate(DOC["entries"]):
        e = decode_log_entry(bytes.fromhex(v["entry_hex"]))
        assert e.seq == v["seq"] == i
        assert e.leaf_hash.hex() == v["leaf_hash_hex"]
        assert e.entry.prev == prev == bytes.fromhex(v["prev_hex"])
        assert signed_bytes(e.entry.body).hex() == v["signed_bytes_hex"]
        for sig in v["signatures"]:
            assert keys[sig["key_id"]].verify(
                bytes.fromhex(sig["sig_hex"]), bytes.fromhex(v["signed_bytes_hex"])
            )
        assert check(state, e) is None
        state.apply(e)
        tree.append(e.leaf_hash)
        assert tree.root().hex() == DOC["roots"][i + 1]
        prev = e.leaf_hash


def test_proofs_and_checkpoint_verify() -> None:
    n = len(DOC["entries"])
    root = bytes.fromhex(DOC["roots"][n])
    for p in DOC["inclusion"]:
        leaf = bytes.fromhex(DOC["entries"][p["index"]]["leaf_hash_hex"])
        assert verify_inclusion(
            leaf, p["index"], p["size"], [bytes.fromhex(h) for h in p["proof"]], root
        )
    for p in DOC["consistency"]:
        assert verify_consistency(
            p["size1"],
            p["size2"],
            [bytes.fromhex(h) for h in p["proof"]],
            bytes.fromhex(DOC["roots"][p["size1"]]),
            root,
        )
    cp = verify_checkpoint(DOC["checkpoint"], DOC["vkey"])
    assert (cp.origin, cp.size, cp.root) == (DOC["origin"], n, root)
