"""RFC 6962 / RFC 9162 Merkle trees: proof verification and streaming roots.

Written from RFC 9162 §2.1 (and checked against the transparency-dev reference vectors), not
from the ledger's code. Verifiers return ``False`` for every rejected proof, malformed input
included; they never raise, so a script can feed them untrusted data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 ‖ data)."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node: SHA-256(0x01 ‖ left ‖ right)."""
    return _sha256(b"\x01" + left + right).digest()


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes | bytearray) and len(value) == HASH_SIZE


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _decompose(index: int, size: int) -> tuple[int, int]:
    """Split an inclusion proof for `index` in a tree of `size` into (inner, border) lengths.

    The inner part climbs until the paths of `index` and of the last leaf meet; the border
    part is the chain of left siblings above that point.
    """
    inner = (index ^ (size - 1)).bit_length()
    border = bin(index >> inner).count("1")
    return inner, border


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        seed = node_hash(seed, h) if (index >> i) & 1 == 0 else node_hash(h, seed)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    # Only the siblings on the left take part: those on the right were not in the old tree.
    for i, h in enumerate(proof):
        if (index >> i) & 1 == 1:
            seed = node_hash(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    for h in proof:
        seed = node_hash(h, seed)
    return seed


def root_from_inclusion_proof(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes | None:
    """The root an inclusion proof implies, or None when the proof is malformed."""
    if not (_is_size(index) and _is_size(size)) or index >= size:
        return None
    if not _is_hash(leaf) or not all(_is_hash(h) for h in proof):
        return None
    inner, border = _decompose(index, size)
    if len(proof) != inner + border:
        return None
    return _chain_border_right(_chain_inner(bytes(leaf), proof[:inner], index), proof[inner:])


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: is the leaf with hash `leaf_hash` at `index` in the tree `root`?"""
    try:
        computed = root_from_inclusion_proof(leaf_hash, index, size, list(proof))
    except Exception:  # hostile input of the wrong types is a rejected proof, not a crash
        return False
    return computed is not None and _is_hash(root) and computed == bytes(root)


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> bool:
    """RFC 9162 §2.1.4.2: is the tree (size2, root2) an append-only extension of (size1, root1)?"""
    try:
        return _verify_consistency(size1, size2, list(proof), root1, root2)
    except Exception:
        return False


def _verify_consistency(
    size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes
) -> bool:
    if not (_is_size(size1) and _is_size(size2)) or size2 < size1:
        return False
    if not (_is_hash(root1) and _is_hash(root2)) or not all(_is_hash(h) for h in proof):
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if size1 == 0:
        # Every tree extends the empty tree; there is nothing to prove.
        return not proof
    if not proof:
        return False
    inner, border = _decompose(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1  # trailing zeros of size1
    inner -= shift
    # The proof starts with the root of the complete subtree of size 2**shift holding leaf
    # size1-1, unless that subtree is the whole old tree, whose root the verifier has.
    if size1 == 1 << shift:
        seed, rest = bytes(root1), proof
    else:
        seed, rest = proof[0], proof[1:]
    if len(rest) != inner + border:
        return False
    mask = (size1 - 1) >> shift
    hash1 = _chain_border_right(_chain_inner_right(seed, rest[:inner], mask), rest[inner:])
    if hash1 != root1:
        return False
    hash2 = _chain_border_right(_chain_inner(seed, rest[:inner], mask), rest[inner:])
    return hash2 == root2


class CompactRange:
    """A Merkle tree kept as the roots of its perfect subtrees: O(log n) memory, O(1) append.

    ``root()`` at any size gives the RFC 6962 root of the leaves appended so far, so a verifier
    streams the log once and checks the root at every checkpoint.
    """

    __slots__ = ("_nodes", "size")

    def __init__(self) -> None:
        self.size = 0
        self._nodes: list[bytes] = []  # perfect-subtree roots, largest (leftmost) first

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash (already SHA-256(0x00 ‖ data))."""
        node = leaf
        size = self.size
        nodes = self._nodes
        # Each trailing 1 bit of the old size is a perfect subtree the new leaf completes.
        while size & 1:
            node = _sha256(b"\x01" + nodes.pop() + node).digest()
            size >>= 1
        nodes.append(node)
        self.size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def copy(self) -> CompactRange:
        """An independent range at the same size (to try a leaf without appending it here)."""
        other = CompactRange()
        other.size = self.size
        other._nodes = list(self._nodes)
        return other

    def root(self) -> bytes:
        if not self._nodes:
            return EMPTY_ROOT
        node = self._nodes[-1]
        for left in reversed(self._nodes[:-1]):
            node = node_hash(left, node)
        return node


def root_of(leaves: Iterable[bytes]) -> bytes:
    """The RFC 6962 root over leaf hashes."""
    tree = CompactRange()
    tree.extend(leaves)
    return tree.root()


def consistency_proof(leaves: Sequence[bytes], size1: int) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF over leaf hashes (for tests and for checkpoints in memory).

    O(n); the auditor uses it only to cross-check, never to trust a server.
    """
    size2 = len(leaves)
    if not 0 < size1 <= size2:
        return []
    return _subproof(size1, leaves, True)


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _mth(leaves: Sequence[bytes]) -> bytes:
    return root_of(leaves)


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [_mth(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _mth(leaves[:k])]


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH over leaf hashes (tests and tooling)."""
    n = len(leaves)
    if not 0 <= index < n or n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_proof(leaves[:k], index), _mth(leaves[k:])]
    return [*inclusion_proof(leaves[k:], index - k), _mth(leaves[:k])]
