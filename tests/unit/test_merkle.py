"""Properties of ledger.merkle against a naive recursive RFC 6962 reference written here."""

from __future__ import annotations

import hashlib
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.errors import FormatError, StewardError
from ledger.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MemoryNodeStore,
    MerkleTree,
    NodeStore,
    TreeRangeError,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------
# Naive reference: RFC 6962 §2.1 written out recursively, independent of the code under test.
# --------------------------------------------------------------------------------------------


def _sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(hs: list[bytes]) -> bytes:
    if not hs:
        return _sha(b"")
    if len(hs) == 1:
        return hs[0]
    k = _split(len(hs))
    return _sha(b"\x01" + ref_mth(hs[:k]) + ref_mth(hs[k:]))


def ref_path(m: int, hs: list[bytes]) -> list[bytes]:
    if len(hs) <= 1:
        return []
    k = _split(len(hs))
    if m < k:
        return [*ref_path(m, hs[:k]), ref_mth(hs[k:])]
    return [*ref_path(m - k, hs[k:]), ref_mth(hs[:k])]


def ref_subproof(m: int, hs: list[bytes], whole: bool) -> list[bytes]:
    n = len(hs)
    if m == n:
        return [] if whole else [ref_mth(hs)]
    k = _split(n)
    if m <= k:
        return [*ref_subproof(m, hs[:k], whole), ref_mth(hs[k:])]
    return [*ref_subproof(m - k, hs[k:], False), ref_mth(hs[:k])]


def ref_consistency(m: int, hs: list[bytes]) -> list[bytes]:
    if m == 0 or m == len(hs):
        return []
    return ref_subproof(m, hs, True)


def leaves(n: int, salt: int = 0) -> list[bytes]:
    return [leaf_hash(b"entry-%d-%d" % (salt, i)) for i in range(n)]


def flip(b: bytes, bit: int) -> bytes:
    out = bytearray(b)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


class CountingStore:
    """A NodeStore wrapper that counts reads."""

    def __init__(self) -> None:
        self.inner = MemoryNodeStore()
        self.reads = 0

    def get(self, level: int, index: int) -> bytes:
        self.reads += 1
        return self.inner.get(level, index)

    def append(self, level: int, node: bytes) -> None:
        self.inner.append(level, node)

    def count(self, level: int) -> int:
        return self.inner.count(level)


class CountingHasher:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, left: bytes, right: bytes) -> bytes:
        self.calls += 1
        return node_hash(left, right)


# --------------------------------------------------------------------------------------------
# Hashing basics
# --------------------------------------------------------------------------------------------


def test_hash_primitives() -> None:
    assert _sha(b"") == EMPTY_ROOT
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"abc") == _sha(b"\x00abc")
    assert node_hash(b"L" * 32, b"R" * 32) == _sha(b"\x01" + b"L" * 32 + b"R" * 32)
    # RFC 6962 test leaf "" hashes to the well-known value used in the vectors.
    assert leaf_hash(b"").hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )


def test_empty_tree() -> None:
    tree = MerkleTree()
    assert tree.size == 0
    assert tree.root() == EMPTY_ROOT
    assert tree.consistency_proof(0, 0) == []
    with pytest.raises(TreeRangeError):
        tree.inclusion_proof(0, 0)


# --------------------------------------------------------------------------------------------
# Properties: roots and inclusion
# --------------------------------------------------------------------------------------------


@PROPS
@given(n=st.integers(1, 300), salt=st.integers(0, 2**16))
def test_roots_of_every_prefix_match_reference(n: int, salt: int) -> None:
    hs = leaves(n, salt)
    tree = MerkleTree.from_leaves(hs)
    assert tree.size == n
    assert tree.root() == ref_mth(hs)
    for m in range(n + 1):
        assert tree.root(m) == ref_mth(hs[:m])


@PROPS
@given(n=st.integers(1, 300), salt=st.integers(0, 2**16), data=st.data())
def test_inclusion_proofs_match_reference_and_verify(
    n: int, salt: int, data: st.DataObject
) -> None:
    hs = leaves(n, salt)
    tree = MerkleTree.from_leaves(hs)
    size = data.draw(st.integers(1, n), label="size")
    for index in {0, size - 1, data.draw(st.integers(0, size - 1), label="index")}:
        proof = tree.inclusion_proof(index, size)
        assert proof == ref_path(index, hs[:size])
        root = tree.root(size)
        assert verify_inclusion(hs[index], index, size, proof, root)
        assert root_from_inclusion_proof(hs[index], index, size, proof) == root


@PROPS
@given(n=st.integers(1, 300), salt=st.integers(0, 2**16), data=st.data())
def test_any_single_bit_flip_breaks_inclusion(n: int, salt: int, data: st.DataObject) -> None:
    hs = leaves(n, salt)
    tree = MerkleTree.from_leaves(hs)
    size = data.draw(st.integers(1, n), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = tree.inclusion_proof(index, size)
    root = tree.root(size)
    bit = data.draw(st.integers(0, HASH_SIZE * 8 - 1), label="bit")

    assert not verify_inclusion(flip(hs[index], bit), index, size, proof, root)
    assert not verify_inclusion(hs[index], index, size, proof, flip(root, bit))
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1), label="element")
        bad = [*proof[:i], flip(proof[i], bit), *proof[i + 1 :]]
        assert not verify_inclusion(hs[index], index, size, bad, root)
        # A dropped or an extra element is rejected too.
        assert not verify_inclusion(hs[index], index, size, proof[:-1], root)
    assert not verify_inclusion(hs[index], index, size, [*proof, root], root)
    # The proof does not prove another position or another size.
    if size > 1:
        other = data.draw(st.integers(0, size - 1).filter(lambda j: j != index), label="other")
        assert not verify_inclusion(hs[index], other, size, proof, root)


def test_every_inclusion_proof_of_a_small_tree() -> None:
    n = 70
    hs = leaves(n)
    tree = MerkleTree.from_leaves(hs)
    for size in range(1, n + 1):
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert proof == ref_path(index, hs[:size])
            assert verify_inclusion(hs[index], index, size, proof, root)


# --------------------------------------------------------------------------------------------
# Properties: consistency
# --------------------------------------------------------------------------------------------


def test_consistency_for_every_pair_of_sizes() -> None:
    """Every size1 <= size2 <= n: the proof equals the reference and verifies."""
    n = 70
    hs = leaves(n, 7)
    tree = MerkleTree.from_leaves(hs)
    roots = [ref_mth(hs[:m]) for m in range(n + 1)]
    for size2 in range(n + 1):
        for size1 in range(size2 + 1):
            proof = tree.consistency_proof(size1, size2)
            assert proof == ref_consistency(size1, hs[:size2]), (size1, size2)
            assert verify_consistency(size1, size2, proof, roots[size1], roots[size2]), (
                size1,
                size2,
            )


@PROPS
@given(n=st.integers(1, 300), salt=st.integers(0, 2**16), data=st.data())
def test_consistency_proofs_verify_and_bit_flips_fail(
    n: int, salt: int, data: st.DataObject
) -> None:
    hs = leaves(n, salt)
    tree = MerkleTree.from_leaves(hs)
    size2 = data.draw(st.integers(1, n), label="size2")
    size1 = data.draw(st.integers(1, size2), label="size1")
    proof = tree.consistency_proof(size1, size2)
    assert proof == ref_consistency(size1, hs[:size2])
    root1, root2 = tree.root(size1), tree.root(size2)
    assert verify_consistency(size1, size2, proof, root1, root2)

    bit = data.draw(st.integers(0, HASH_SIZE * 8 - 1), label="bit")
    assert not verify_consistency(size1, size2, proof, flip(root1, bit), root2)
    assert not verify_consistency(size1, size2, proof, root1, flip(root2, bit))
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1), label="element")
        bad = [*proof[:i], flip(proof[i], bit), *proof[i + 1 :]]
        assert not verify_consistency(size1, size2, bad, root1, root2)
        assert not verify_consistency(size1, size2, proof[:-1], root1, root2)
    assert not verify_consistency(size1, size2, [*proof, root1], root1, root2)
    if size1 < size2:
        assert not verify_consistency(size1, size2, proof, root2, root1)
        assert not verify_consistency(size2, size1, proof, root2, root1)


def test_consistency_from_size_zero() -> None:
    hs = leaves(5)
    tree = MerkleTree.from_leaves(hs)
    root = tree.root()
    assert tree.consistency_proof(0, 5) == []
    assert verify_consistency(0, 5, [], EMPTY_ROOT, root)
    assert verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    # Nothing is proved from size 0: not with a proof, not with a root other than the empty one.
    assert not verify_consistency(0, 5, [root], EMPTY_ROOT, root)
    assert not verify_consistency(0, 5, [], root, root)
    assert not verify_consistency(0, 0, [], root, root)
    assert not verify_inclusion(hs[0], 0, 0, [], EMPTY_ROOT)


def test_equal_sizes_need_empty_proof_and_equal_roots() -> None:
    tree = MerkleTree.from_leaves(leaves(6))
    r = tree.root()
    assert verify_consistency(6, 6, [], r, r)
    assert verify_consistency(6, 6, None, r, r)
    assert not verify_consistency(6, 6, [r], r, r)
    assert not verify_consistency(6, 6, [], r, tree.root(5))


# --------------------------------------------------------------------------------------------
# Verifiers never raise on garbage
# --------------------------------------------------------------------------------------------

_any_hash = st.one_of(st.binary(min_size=0, max_size=40), st.binary(min_size=32, max_size=32))
_any_int = st.one_of(st.integers(-5, 70), st.just(2**64 - 1), st.integers(-(2**70), 2**70))


@settings(max_examples=300, deadline=None)
@given(
    leaf=_any_hash,
    index=_any_int,
    size=_any_int,
    proof=st.one_of(st.none(), st.lists(_any_hash, max_size=8)),
    root=_any_hash,
)
def test_verify_inclusion_never_raises(
    leaf: bytes, index: int, size: int, proof: list[bytes] | None, root: bytes
) -> None:
    assert verify_inclusion(leaf, index, size, proof, root) in (True, False)


@settings(max_examples=300, deadline=None)
@given(
    size1=_any_int,
    size2=_any_int,
    proof=st.one_of(st.none(), st.lists(_any_hash, max_size=8)),
    root1=_any_hash,
    root2=_any_hash,
)
def test_verify_consistency_never_raises(
    size1: int, size2: int, proof: list[bytes] | None, root1: bytes, root2: bytes
) -> None:
    assert verify_consistency(size1, size2, proof, root1, root2) in (True, False)


def test_hashes_must_be_32_bytes() -> None:
    hs = leaves(4)
    tree = MerkleTree.from_leaves(hs)
    proof, root = tree.inclusion_proof(1, 4), tree.root()
    assert verify_inclusion(hs[1], 1, 4, proof, root)
    assert not verify_inclusion(hs[1][:31], 1, 4, proof, root)
    assert not verify_inclusion(hs[1], 1, 4, [*proof[:-1], proof[-1] + b"\x00"], root)
    assert not verify_inclusion(hs[1], 1, 4, proof, root + b"\x00")
    with pytest.raises(StewardError, match="expected 2"):
        root_from_inclusion_proof(hs[1], 1, 4, proof[:1])


# --------------------------------------------------------------------------------------------
# The tree API: errors, resuming, storage
# --------------------------------------------------------------------------------------------


def test_append_returns_index_and_rejects_bad_hashes() -> None:
    tree = MerkleTree()
    assert [tree.append(h) for h in leaves(3)] == [0, 1, 2]
    assert len(tree) == 3
    with pytest.raises(FormatError, match="32 bytes"):
        tree.append(b"short")
    with pytest.raises(FormatError):
        tree.append("x" * 32)  # type: ignore[arg-type]
    assert tree.size == 3


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("root", (4,)),
        ("root", (-1,)),
        ("inclusion_proof", (3, 3)),
        ("inclusion_proof", (-1, 3)),
        ("inclusion_proof", (0, 4)),
        ("consistency_proof", (2, 1)),
        ("consistency_proof", (1, 4)),
        ("consistency_proof", (-1, 2)),
        ("leaf", (3,)),
    ],
)
def test_out_of_range_requests_raise(call: str, args: tuple[int, ...]) -> None:
    tree = MerkleTree.from_leaves(leaves(3))
    with pytest.raises(TreeRangeError, match=r"expected|out of range"):
        getattr(tree, call)(*args)


def test_resume_from_store_and_complete_interrupted_append() -> None:
    hs = leaves(11)
    store = MemoryNodeStore()
    MerkleTree.from_leaves(hs[:7], store)
    resumed = MerkleTree(store)
    assert resumed.size == 7
    for h in hs[7:]:
        resumed.append(h)
    assert resumed.root() == ref_mth(hs)

    # A store that holds a leaf whose parents were never written (crash mid-append).
    partial = MemoryNodeStore()
    for h in hs[:8]:
        partial.append(0, h)
    tree = MerkleTree(partial)
    assert isinstance(partial, NodeStore)
    assert tree.root() == ref_mth(hs[:8])
    assert partial.count(3) == 1
    assert tree.inclusion_proof(5, 8) == ref_path(5, hs[:8])


def test_the_default_store_holds_the_nodes_any_store_holds() -> None:
    # append() works in the default store's bytearrays; any other store goes through the
    # NodeStore methods. Both must store the same nodes, level by level.
    for n in (1, 2, 3, 7, 8, 9, 300):
        hs = leaves(n, salt=n)
        memory, other = MemoryNodeStore(), CountingStore()
        for i, h in enumerate(hs):
            assert MerkleTree(memory).append(h) == MerkleTree(other).append(h) == i
        for level in range(n.bit_length() + 1):
            assert memory.count(level) == other.count(level) == n >> level
            assert [memory.get(level, i) for i in range(memory.count(level))] == [
                other.get(level, i) for i in range(other.count(level))
            ]
        assert MerkleTree(memory).root() == ref_mth(hs)


def test_a_node_hasher_returning_no_hash_is_refused_with_any_store() -> None:
    hs = leaves(2)
    for store in (MemoryNodeStore(), CountingStore()):
        tree = MerkleTree(store, node_hasher=lambda left, right: b"short")
        tree.append(hs[0])
        with pytest.raises(FormatError, match="node hash is 5 bytes, expected 32"):
            tree.append(hs[1])
        assert store.count(0) == 2 and store.count(1) == 0


def test_memory_store_is_compact() -> None:
    n = 2**12 + 5
    store = MemoryNodeStore()
    MerkleTree.from_leaves(leaves(n), store)
    # Level k holds n >> k hashes: fewer than 2n hashes of 32 bytes in total.
    assert store.nbytes == HASH_SIZE * sum(n >> k for k in range(n.bit_length()))
    assert store.nbytes < 2 * n * HASH_SIZE
    with pytest.raises(IndexError):
        store.get(0, n)


# --------------------------------------------------------------------------------------------
# Work bounds: O(log n), never a rehash of the log
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_tree() -> tuple[MerkleTree, CountingStore, CountingHasher]:
    store, hasher = CountingStore(), CountingHasher()
    n = 2**16 + 3
    tree = MerkleTree(store, node_hasher=hasher)
    for i in range(n):
        tree.append(_sha(i.to_bytes(4, "big")))
    # Appends cost O(1) amortised: one node hash per completed perfect subtree (< n in total).
    assert hasher.calls == sum(n >> k for k in range(1, n.bit_length()))
    return tree, store, hasher


def test_append_worst_case_is_log_n() -> None:
    counter = CountingHasher()
    tree = MerkleTree.from_leaves(leaves(2**10 - 1), node_hasher=counter)
    counter.calls = 0
    tree.append(leaf_hash(b"last"))  # completes a perfect tree of 1024 leaves
    assert counter.calls == 10
    counter.calls = 0
    tree.append(leaf_hash(b"one more"))  # a left child: no hashing at all
    assert counter.calls == 0


def test_proofs_read_and_hash_o_log_n(
    big_tree: tuple[MerkleTree, CountingStore, CountingHasher],
) -> None:
    tree, store, hasher = big_tree
    n = tree.size
    bound = 2 * math.ceil(math.log2(n)) + 2
    for size in (n, n - 1, 2**16, 2**15 + 12345):
        for index in (0, size // 3, size - 1):
            store.reads, hasher.calls = 0, 0
            proof = tree.inclusion_proof(index, size)
            assert store.reads <= bound and hasher.calls <= bound, (size, index)
            assert verify_inclusion(tree.leaf(index), index, size, proof, tree.root(size))
        for size1 in (1, 3, size // 2 + 1, size - 1):
            store.reads, hasher.calls = 0, 0
            proof = tree.consistency_proof(size1, size)
            assert store.reads <= bound and hasher.calls <= bound, (size1, size)
            assert verify_consistency(size1, size, proof, tree.root(size1), tree.root(size))
        store.reads, hasher.calls = 0, 0
        tree.root(size)
        assert store.reads <= math.ceil(math.log2(n)) + 1
