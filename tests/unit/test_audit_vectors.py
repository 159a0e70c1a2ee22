"""The auditor, with its own code only, agrees with tests/vectors/ledger-vectors.json."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from audit.formats import (
    BODY_SCHEMAS,
    ENTRY_SCHEMAS,
    decode_body,
    decode_entry,
    signed_bytes,
)
from audit.merkle import CompactRange, leaf_hash, verify_consistency, verify_inclusion
from audit.note import open_checkpoint, parse_vkey
from audit.trust import TrustRoot
from audit.verify import verify

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "ledger-vectors.json"


@pytest.fixture(scope="module")
def vec() -> dict[str, Any]:
    if not VECTORS.exists():
        pytest.fail(f"{VECTORS} is missing")
    data: dict[str, Any] = json.loads(VECTORS.read_text())
    return data


def _trust(vec: dict[str, Any]) -> TrustRoot:
    keys = {k["key_id"]: k for k in vec["keys"]}
    roots = [
        {"principal": keys[k]["principal"], "public_pem": keys[k]["public_pem"]}
        for k in vec["roots_trusted"]
    ]
    return TrustRoot.from_json({"roots": roots, "vkey": vec["vkey"], "origin": vec["origin"]})


def test_fingerprints_match(vec: dict[str, Any]) -> None:
    fps = vec["schema_fingerprints"]
    # The auditor reads every EventBody version, the current one first.
    assert [fp.hex() for fp in BODY_SCHEMAS] == [
        fps["EventBody"],
        fps["EventBody.v2"],
        fps["EventBody.v1"],
    ]
    assert [fp.hex() for fp in ENTRY_SCHEMAS] == [vec["schema_fingerprints"]["Entry"]]


def test_entries_decode_chain_and_hash(vec: dict[str, Any]) -> None:
    prev = bytes(32)
    for e in vec["entries"]:
        raw = bytes.fromhex(e["entry_hex"])
        entry = decode_entry(raw)
        assert entry.seq == e["seq"] and entry.received_at == e["received_at"]
        assert entry.prev == prev == bytes.fromhex(e["prev_hex"])
        assert entry.body == bytes.fromhex(e["body_hex"])
        assert signed_bytes(entry.body) == bytes.fromhex(e["signed_bytes_hex"])
        body = decode_body(entry.body)
        assert body.type == e["type"] and body.event_id.hex() == e["event_id_hex"]
        prev = leaf_hash(raw)
        assert prev.hex() == e["leaf_hash_hex"]


def test_roots_at_every_size(vec: dict[str, Any]) -> None:
    tree = CompactRange()
    assert tree.root().hex() == vec["roots"][0]
    for e, want in zip(vec["entries"], vec["roots"][1:], strict=True):
        tree.append(bytes.fromhex(e["leaf_hash_hex"]))
        assert tree.root().hex() == want


def test_proofs(vec: dict[str, Any]) -> None:
    leaves = [bytes.fromhex(e["leaf_hash_hex"]) for e in vec["entries"]]
    roots = [bytes.fromhex(r) for r in vec["roots"]]

    def hashes(p: list[str]) -> list[bytes]:
        return [bytes.fromhex(h) if len(h) == 64 else base64.b64decode(h) for h in p]

    for c in vec["inclusion"]:
        assert verify_inclusion(
            leaves[c["index"]], c["index"], c["size"], hashes(c["proof"]), roots[c["size"]]
        )
    for c in vec["consistency"]:
        assert verify_consistency(
            c["size1"], c["size2"], hashes(c["proof"]), roots[c["size1"]], roots[c["size2"]]
        )


def test_checkpoint_note(vec: dict[str, Any]) -> None:
    cp = open_checkpoint(vec["checkpoint"], [parse_vkey(vec["vkey"])])
    assert cp.origin == vec["origin"] and cp.size == len(vec["entries"])
    assert base64.b64encode(cp.root).decode() == vec["checkpoint_root_b64"]


def test_the_whole_ledger_verifies_clean(vec: dict[str, Any]) -> None:
    records = [bytes.fromhex(e["entry_hex"]) for e in vec["entries"]]
    report = verify(records, _trust(vec), [vec["checkpoint"]])
    assert [str(f) for f in report.findings] == []
    assert report.verified_size == len(records)
    # The v3 entries' pause and resume are on the report's timeline, at their seqs.
    marks = [(e.seq, e.kind) for e in report.timeline if e.kind in ("pause", "resume")]
    kinds = {e["seq"]: e["type"] for e in vec["entries"]}
    assert [kinds[s] for s, _ in marks] == ["RolloutPaused", "RolloutResumed"]
