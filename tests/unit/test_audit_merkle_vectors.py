"""audit.merkle agrees with the transparency-dev reference on every shared RFC 6962 vector."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from audit.merkle import (
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

REPO = Path(__file__).resolve().parents[2]


def shared_vectors() -> Path:
    root = Path(os.environ.get("STEWARD_SHARED_VECTORS", REPO.parent / "shared" / "vectors"))
    if not (root / "rfc6962").is_dir():
        pytest.fail(f"shared vectors not found at {root} (set STEWARD_SHARED_VECTORS)")
    return root / "rfc6962"


def _files(kind: str) -> list[Path]:
    root = Path(os.environ.get("STEWARD_SHARED_VECTORS", REPO.parent / "shared" / "vectors"))
    return sorted((root / "rfc6962" / kind).glob("*/*.json"))


def _b64(value: Any) -> Any:
    return base64.b64decode(value) if isinstance(value, str) else value


def _ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p in paths]


def test_vectors_are_present() -> None:
    root = shared_vectors()
    assert len(list((root / "inclusion").glob("*/*.json"))) > 50
    assert len(list((root / "consistency").glob("*/*.json"))) > 50


INCLUSION = _files("inclusion")
CONSISTENCY = _files("consistency")


@pytest.mark.parametrize("path", INCLUSION, ids=_ids(INCLUSION))
def test_inclusion_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    proof = [_b64(h) for h in (v["proof"] or [])]
    ok = verify_inclusion(_b64(v["leafHash"]), v["leafIdx"], v["treeSize"], proof, _b64(v["root"]))
    assert ok is (not v["wantErr"]), v.get("desc")


@pytest.mark.parametrize("path", CONSISTENCY, ids=_ids(CONSISTENCY))
def test_consistency_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    proof = [_b64(h) for h in (v["proof"] or [])]
    ok = verify_consistency(v["size1"], v["size2"], proof, _b64(v["root1"]), _b64(v["root2"]))
    assert ok is (not v["wantErr"]), v.get("desc")


def test_all_166_vectors_ran() -> None:
    assert len(INCLUSION) + len(CONSISTENCY) == 166


def test_generated_proofs_verify_and_compact_range_matches() -> None:
    leaves = [leaf_hash(hashlib.sha256(str(i).encode()).digest()) for i in range(40)]
    tree = CompactRange()
    for n in range(1, 41):
        tree.append(leaves[n - 1])
        root = root_of(leaves[:n])
        assert tree.root() == root
        for i in range(n):
            assert verify_inclusion(leaves[i], i, n, inclusion_proof(leaves[:n], i), root)
        for m in range(1, n + 1):
            proof = consistency_proof(leaves[:n], m)
            assert verify_consistency(m, n, proof, root_of(leaves[:m]), root)
            if m < n:
                assert not verify_consistency(
                    m, n, proof, root_of(leaves[: m - 1]) if m > 1 else leaves[1], root
                )


def test_garbage_is_rejected_without_raising() -> None:
    assert verify_inclusion(b"x", 0, 1, [], b"y") is False
    assert verify_inclusion(None, 0, 1, None, None) is False  # type: ignore[arg-type]
    assert verify_consistency(2, 1, [], bytes(32), bytes(32)) is False
    assert verify_consistency(-1, 1, [], bytes(32), bytes(32)) is False
