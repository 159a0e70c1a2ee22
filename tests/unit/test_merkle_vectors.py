"""Every transparency-dev/merkle proof vector in the shared peer vectors (rfc6962/).

The vectors live next to the repository, in ``<repo>/../shared/vectors`` (CI clones the repo
next to a copy of ``shared/``); ``STEWARD_SHARED_VECTORS`` overrides the location. Missing
vectors are a failure, never a skip: the suite must not silently stop checking them.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from ledger.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion

EXPECTED_INCLUSION = 82
EXPECTED_CONSISTENCY = 84


def shared_vectors_dir() -> Path:
    override = os.environ.get("STEWARD_SHARED_VECTORS")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2].parent / "shared" / "vectors"


RFC6962 = shared_vectors_dir() / "rfc6962"


def _files(kind: str) -> list[Path]:
    found = sorted((RFC6962 / kind).glob("*/*.json"))
    # An empty parameter list would make pytest skip; a missing file makes the test fail.
    return found or [RFC6962 / kind / "MISSING"]


def _ids(paths: list[Path]) -> list[str]:
    return [p.relative_to(RFC6962).as_posix() for p in paths]


INCLUSION = _files("inclusion")
CONSISTENCY = _files("consistency")


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _proof(value: Any) -> list[bytes] | None:
    return None if value is None else [_b64(h) for h in value]


def test_vectors_are_present() -> None:
    """Fails (not skips) when the shared vectors cannot be found or are incomplete."""
    assert RFC6962.is_dir(), (
        f"shared RFC 6962 vectors not found at {RFC6962}; clone the repo next to shared/ "
        "or set STEWARD_SHARED_VECTORS"
    )
    assert len(INCLUSION) == EXPECTED_INCLUSION, f"found {len(INCLUSION)} inclusion vectors"
    assert len(CONSISTENCY) == EXPECTED_CONSISTENCY, f"found {len(CONSISTENCY)} consistency vectors"
    # Both outcomes are exercised.
    wants = {json.loads(p.read_text())["wantErr"] for p in INCLUSION + CONSISTENCY}
    assert wants == {True, False}


@pytest.mark.parametrize("path", INCLUSION, ids=_ids(INCLUSION))
def test_inclusion_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    ok = verify_inclusion(
        _b64(v["leafHash"]), v["leafIdx"], v["treeSize"], _proof(v["proof"]), _b64(v["root"])
    )
    assert ok is (not v["wantErr"]), f"{v['desc']}: verifier said {ok}, wantErr={v['wantErr']}"


@pytest.mark.parametrize("path", CONSISTENCY, ids=_ids(CONSISTENCY))
def test_consistency_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    ok = verify_consistency(
        v["size1"], v["size2"], _proof(v["proof"]), _b64(v["root1"]), _b64(v["root2"])
    )
    assert ok is (not v["wantErr"]), f"{v['desc']}: verifier said {ok}, wantErr={v['wantErr']}"


# The vectors' trees are built from the RFC 6962 test leaves (as in transparency-dev/merkle).
RFC6962_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
HAPPY = [p for p in INCLUSION + CONSISTENCY if p.name == "happy-path.json"]


@pytest.mark.parametrize("path", HAPPY, ids=_ids(HAPPY))
def test_tree_generates_the_reference_proofs(path: Path) -> None:
    """Our tree, over the same leaves, produces exactly the roots and proofs of the vectors."""
    tree = MerkleTree.from_leaves(leaf_hash(d) for d in RFC6962_LEAVES)
    v = json.loads(path.read_text())
    want_proof = _proof(v["proof"]) or []
    if "leafIdx" in v:
        assert tree.leaf(v["leafIdx"]) == _b64(v["leafHash"])
        assert tree.root(v["treeSize"]) == _b64(v["root"])
        assert tree.inclusion_proof(v["leafIdx"], v["treeSize"]) == want_proof
    else:
        assert tree.root(v["size1"]) == _b64(v["root1"])
        assert tree.root(v["size2"]) == _b64(v["root2"])
        assert tree.consistency_proof(v["size1"], v["size2"]) == want_proof
