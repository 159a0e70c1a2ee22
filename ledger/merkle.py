"""RFC 6962 / RFC 9162 Merkle tree: hashing, an incremental tree, proofs and their verification.

Hashing (RFC 6962 §2.1, SHA-256)::

    leaf_hash(d)    = SHA-256(0x00 || d)
    node_hash(l, r) = SHA-256(0x01 || l || r)
    MTH({})         = SHA-256("")            (EMPTY_ROOT)

The tree of ``n`` leaves splits at the largest power of two strictly below ``n``.

Storage. :class:`MerkleTree` keeps, per level ``k``, the hashes of the *complete perfect
subtrees* of height ``k``: entry ``i`` of level ``k`` is the hash of leaves
``[i * 2**k, (i + 1) * 2**k)``. Level 0 holds the leaf hashes. Every node of the RFC 6962 tree of
any size ``m <= n`` is either one of those stored hashes or a node on the right edge of that
tree, which is assembled from at most ``log2(m)`` stored hashes. Appending costs O(1) amortised
(O(log n) worst case) node hashes; a root, an inclusion proof or a consistency proof costs
O(log n) store reads and node hashes. The whole log is never rehashed.

The storage is a :class:`NodeStore` (three methods), so the ledger can back it with SQL; the
default :class:`MemoryNodeStore` keeps one ``bytearray`` per level (about 64 bytes per leaf in
total, so a million leaves take ~64 MB).

Verification follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency) with the
strictness of transparency-dev/merkle (the Go reference used by Trillian, Tessera and
Sigstore): every hash must be exactly 32 bytes, a proof must have exactly the expected
length, ``index >= size`` and ``size1 > size2`` are rejected, ``size1 == size2`` needs an empty
proof and equal roots. Size 0 proves nothing: an inclusion proof needs ``size >= 1``, and a
consistency "proof" from size 0 is accepted only with an empty proof and when ``root1`` is the
empty-tree root (stricter than the Go reference, which ignores ``root1`` there). The ``verify_*``
functions return ``False`` for any rejected input and never raise for a bad proof.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

from ledger.errors import FormatError, StewardError, VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MemoryNodeStore",
    "MerkleTree",
    "NodeStore",
    "TreeRangeError",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion_proof",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()
"""Root hash of the empty tree: SHA-256 of the empty string (RFC 6962 §2.1)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

NodeHasher = Callable[[bytes, bytes], bytes]


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(_LEAF_PREFIX + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + bytes(left) + bytes(right)).digest()


def _check_node(node: bytes) -> None:
    if len(node) != HASH_SIZE:
        raise FormatError(f"node hash is {len(node)} bytes, expected {HASH_SIZE}", field="node")


class TreeRangeError(StewardError, ValueError):
    """A root or proof was asked for a size or index the tree cannot serve."""


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


@runtime_checkable
class NodeStore(Protocol):
    """Where a :class:`MerkleTree` keeps its perfect-subtree hashes.

    Level ``k`` is an append-only array: entry ``i`` is the 32-byte hash of leaves
    ``[i * 2**k, (i + 1) * 2**k)``. The tree only ever appends to a level the entry at
    index ``count(level)`` and reads entries below ``count(level)``.
    """

    def get(self, level: int, index: int) -> bytes:
        """The hash stored at ``(level, index)``; raise ``IndexError`` if there is none."""
        ...

    def append(self, level: int, node: bytes) -> None:
        """Store ``node`` as entry ``count(level)`` of ``level``."""
        ...

    def count(self, level: int) -> int:
        """How many hashes ``level`` holds (0 for a level never written)."""
        ...


class MemoryNodeStore:
    """The default in-memory :class:`NodeStore`: one ``bytearray`` of packed hashes per level."""

    __slots__ = ("_levels",)

    def __init__(self) -> None:
        self._levels: list[bytearray] = []

    def get(self, level: int, index: int) -> bytes:
        if level < 0 or index < 0 or level >= len(self._levels):
            raise IndexError(f"no node at level {level} index {index}")
        buf = self._levels[level]
        start = index * HASH_SIZE
        if start + HASH_SIZE > len(buf):
            raise IndexError(
                f"no node at level {level} index {index}: the level holds {len(buf) // HASH_SIZE}"
            )
        return bytes(buf[start : start + HASH_SIZE])

    def append(self, level: int, node: bytes) -> None:
        _check_node(node)
        if level < 0 or level > len(self._levels):
            raise IndexError(f"cannot append to level {level}: {len(self._levels)} levels exist")
        if level == len(self._levels):
            self._levels.append(bytearray())
        self._levels[level] += node

    def append_leaf(self, node: bytes, hash_pair: Callable[[bytes, bytes], bytes]) -> int:
        """MerkleTree.append on this store, in its bytearrays (the same nodes, fewer calls):
        the leaf count is the length of level 0, and the left sibling of a new right child is
        the node stored just before it. Returns the leaf's index."""
        levels = self._levels
        if not levels:
            levels.append(bytearray())
        buf = levels[0]
        index = i = len(buf) // HASH_SIZE
        buf += node
        level = 0
        while i & 1:
            node = hash_pair(bytes(buf[-2 * HASH_SIZE : -HASH_SIZE]), node)
            _check_node(node)
            level += 1
            i >>= 1
            if level == len(levels):
                levels.append(bytearray())
            buf = levels[level]
            buf += node
        return index

    def count(self, level: int) -> int:
        if level < 0 or level >= len(self._levels):
            return 0
        return len(self._levels[level]) // HASH_SIZE

    @property
    def nbytes(self) -> int:
        """Bytes of hash data held (for memory accounting)."""
        return sum(len(b) for b in self._levels)


# --------------------------------------------------------------------------------------------
# The tree
# --------------------------------------------------------------------------------------------


def _largest_power_of_two_below(n: int) -> int:
    """The largest power of two strictly less than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only RFC 6962 tree over leaf hashes, backed by a :class:`NodeStore`.

    ``MerkleTree(store)`` resumes a tree already held by ``store`` (its size is the number of
    leaf hashes at level 0); parent hashes missing after an interrupted append are completed.
    ``node_hasher`` exists so that tests can count hashing work; it must compute
    :func:`node_hash`.
    """

    __slots__ = ("_hash", "_store")

    def __init__(self, store: NodeStore | None = None, *, node_hasher: NodeHasher = node_hash):
        self._store: NodeStore = store if store is not None else MemoryNodeStore()
        self._hash = node_hasher
        self._complete_levels()

    @classmethod
    def from_leaves(
        cls,
        leaf_hashes: Iterable[bytes],
        store: NodeStore | None = None,
        *,
        node_hasher: NodeHasher = node_hash,
    ) -> MerkleTree:
        """A tree holding ``leaf_hashes`` in order (appended to ``store`` if one is given)."""
        tree = cls(store, node_hasher=node_hasher)
        for h in leaf_hashes:
            tree.append(h)
        return tree

    @property
    def store(self) -> NodeStore:
        return self._store

    @property
    def size(self) -> int:
        """Number of leaves."""
        return self._store.count(0)

    def __len__(self) -> int:
        return self.size

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        self._check_index(index, self.size)
        return self._store.get(0, index)

    def append(self, leaf_hash: bytes) -> int:
        """Append a leaf hash (32 bytes); return its index. O(1) amortised node hashes."""
        if not isinstance(leaf_hash, bytes | bytearray) or len(leaf_hash) != HASH_SIZE:
            got = len(leaf_hash) if isinstance(leaf_hash, bytes | bytearray) else type(leaf_hash)
            raise FormatError(f"leaf hash must be {HASH_SIZE} bytes, got {got}", field="leaf_hash")
        store = self._store
        if type(store) is MemoryNodeStore:
            return store.append_leaf(bytes(leaf_hash), self._hash)
        index = store.count(0)
        node = bytes(leaf_hash)
        store.append(0, node)
        level, i = 0, index
        # Each time the new node is a right child, its perfect parent is now complete.
        while i & 1:
            node = self._hash(store.get(level, i - 1), node)
            level += 1
            i >>= 1
            store.append(level, node)
        return index

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all). O(log n)."""
        n = self.size
        if size is None:
            size = n
        self._check_size(size, n)
        if size == 0:
            return EMPTY_ROOT
        return self._subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 6962 §2.1.1 audit path of leaf ``index`` in the tree of ``size`` leaves.

        Ordered from the leaf's sibling up to the root's child (as RFC 9162 and tlog-proof).
        """
        n = self.size
        if size is None:
            size = n
        self._check_size(size, n)
        self._check_index(index, size)
        proof: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:
            k = _largest_power_of_two_below(hi - lo)
            if index < lo + k:
                proof.append(self._subtree(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._subtree(lo, lo + k))
                lo += k
        proof.reverse()
        return proof

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """RFC 6962 §2.1.2 consistency proof from ``size1`` to ``size2`` leaves.

        Empty when ``size1 == size2`` or ``size1 == 0`` (nothing to prove).
        """
        n = self.size
        if size2 is None:
            size2 = n
        self._check_size(size2, n)
        if not isinstance(size1, int) or size1 < 0 or size1 > size2:
            raise TreeRangeError(f"size1 is {size1!r}, expected 0 <= size1 <= size2 = {size2}")
        if size1 == 0 or size1 == size2:
            return []
        # SUBPROOF(m, D[lo:hi], b) unrolled; invariant: lo < size1 <= hi.
        proof: list[bytes] = []
        lo, hi, whole = 0, size2, True
        while size1 != hi:
            k = _largest_power_of_two_below(hi - lo)
            if size1 <= lo + k:
                proof.append(self._subtree(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._subtree(lo, lo + k))
                lo += k
                whole = False
        if not whole:
            proof.append(self._subtree(lo, hi))
        proof.reverse()
        return proof

    # -- internals ---------------------------------------------------------------------------

    def _subtree(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for a node of an RFC 6962 tree: from at most log2(hi-lo)+1 reads.

        ``[lo, hi)`` is a tree node, so ``lo`` is a multiple of the largest power of two below
        ``hi - lo``; the range is a left-to-right chain of perfect, aligned subtrees.
        """
        parts: list[bytes] = []
        while True:
            width = hi - lo
            if width & (width - 1) == 0:  # perfect
                k = width.bit_length() - 1
                if lo & (width - 1):
                    raise AssertionError(f"[{lo}, {hi}) is not an aligned subtree")
                parts.append(self._store.get(k, lo >> k))
                break
            w = _largest_power_of_two_below(width)
            k = w.bit_length() - 1
            if lo & (w - 1):
                raise AssertionError(f"[{lo}, {hi}) is not a node of an RFC 6962 tree")
            parts.append(self._store.get(k, lo >> k))
            lo += w
        node = parts.pop()
        while parts:
            node = self._hash(parts.pop(), node)
        return node

    def _complete_levels(self) -> None:
        """Add parent hashes a store may lack after an interrupted append."""
        level = 0
        while True:
            below = self._store.count(level)
            if below < 2:
                return
            have = self._store.count(level + 1)
            for i in range(have, below // 2):
                self._store.append(
                    level + 1,
                    self._hash(self._store.get(level, 2 * i), self._store.get(level, 2 * i + 1)),
                )
            level += 1

    @staticmethod
    def _check_size(size: int, n: int) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > n:
            raise TreeRangeError(f"tree size {size!r} out of range: the tree has {n} leaves")

    @staticmethod
    def _check_index(index: int, size: int) -> None:
        if not isinstance(index, int) or isinstance(index, bool) or index < 0 or index >= size:
            raise TreeRangeError(f"leaf index {index!r} out of range: expected 0 <= index < {size}")


# --------------------------------------------------------------------------------------------
# Verification (RFC 9162 §2.1.3.2, §2.1.4.2; same decomposition as transparency-dev/merkle)
# --------------------------------------------------------------------------------------------


def _is_hash(h: object) -> bool:
    return isinstance(h, bytes | bytearray) and len(h) == HASH_SIZE


def _is_size(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _decomp_inclusion(index: int, size: int) -> tuple[int, int]:
    """(inner, border): proof hashes below and on the right border of the tree of ``size``."""
    inner = (index ^ (size - 1)).bit_length()
    border = bin(index >> inner).count("1")
    return inner, border


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        seed = node_hash(seed, h) if (index >> i) & 1 == 0 else node_hash(h, seed)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        if (index >> i) & 1:
            seed = node_hash(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    for h in proof:
        seed = node_hash(h, seed)
    return seed


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes] | None
) -> bytes:
    """The root that ``proof`` leads to from ``leaf_hash`` at ``index`` in a tree of ``size``.

    Raises :class:`VerificationError` when the inputs cannot form a proof (index out of range,
    a hash that is not 32 bytes, a proof of the wrong length).
    """
    proof = list(proof or ())
    if not _is_size(index) or not _is_size(size):
        raise VerificationError(f"index {index!r} and size {size!r} must be integers >= 0")
    if index >= size:
        raise VerificationError(f"leaf index {index} is beyond the tree size {size}")
    if not _is_hash(leaf_hash):
        raise VerificationError(f"leaf hash is not {HASH_SIZE} bytes")
    for i, h in enumerate(proof):
        if not _is_hash(h):
            raise VerificationError(f"proof hash {i} is not {HASH_SIZE} bytes")
    inner, border = _decomp_inclusion(index, size)
    if len(proof) != inner + border:
        raise VerificationError(
            f"inclusion proof has {len(proof)} hashes, expected {inner + border} "
            f"for index {index} in a tree of size {size}"
        )
    node = _chain_inner(bytes(leaf_hash), proof[:inner], index)
    return _chain_border_right(node, proof[inner:])


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes] | None, root: bytes
) -> bool:
    """True iff ``proof`` shows ``leaf_hash`` at ``index`` in the tree of ``size`` with ``root``."""
    if not _is_hash(root):
        return False
    try:
        return root_from_inclusion_proof(leaf_hash, index, size, proof) == bytes(root)
    except VerificationError:
        return False


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes] | None, root1: bytes, root2: bytes
) -> bool:
    """True iff ``proof`` shows the tree (``size1``, ``root1``) is a prefix of (``size2``, ``root2``)."""
    proof = list(proof or ())
    if not (_is_size(size1) and _is_size(size2)):
        return False
    if not (_is_hash(root1) and _is_hash(root2)) or not all(_is_hash(h) for h in proof):
        return False
    root1, root2 = bytes(root1), bytes(root2)
    if size1 > size2:
        return False
    if size1 == size2:
        return not proof and root1 == root2 and (size1 > 0 or root1 == EMPTY_ROOT)
    if size1 == 0:
        # Every tree extends the empty tree, but only the empty tree's own root is accepted.
        return not proof and root1 == EMPTY_ROOT
    if not proof:
        return False

    # 0 < size1 < size2. The proof is (optionally the hash of the perfect subtree of size
    # 2**shift that ends at size1, unless size1 is that subtree) followed by a suffix of the
    # inclusion proof of leaf size1 - 1 in the tree of size2.
    inner, border = _decomp_inclusion(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1  # trailing zero bits of size1
    inner -= shift
    if size1 == 1 << shift:
        seed, rest = root1, proof
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
