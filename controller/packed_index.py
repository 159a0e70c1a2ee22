"""PackedIndex: a read-mostly mapping of fixed-width bytes keys, kept as two packed byte strings.

The controller's snapshot (controller/snapshot.py) stores the per-entry indexes of the ledger
state (``event_ids``, ``entry_seqs``, ``entry_types``, ``evals``) as sorted fixed-width keys
with parallel fixed-width values, and restores them as a `PackedIndex` over those bytes: a binary
search finds a key, and entries folded after the snapshot go to a small dict in front of it. A
restart then does not rebuild a million-entry dict object by object. `pack` builds one from any
mapping (merging, when it is already a PackedIndex); `seq_decode`/`seq_encode` are the value
encoding of the seq indexes.

Since snapshot parts of version 2 (issue #19), the base of a restored index is not bytes but
rows of a SQL table (controller.index_rows) read one key at a time: `RowLookup` is all this
module knows of them, so it stays free of I/O.
"""

from __future__ import annotations

import array
import itertools
import sys
import typing
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import Generic, Protocol, TypeVar

from controller.errors import SnapshotError

SEQ_WIDTH = 8  # bytes per seq value, little-endian unsigned

V = TypeVar("V")


class RowLookup(Protocol):
    """Where an index's persisted entries are when they are rows rather than packed bytes."""

    def get(self, ix: int, key: bytes) -> bytes | None:
        """The encoded value of `key` in index `ix`, or None."""

    def keys(self, ix: int) -> Iterator[bytes]:
        """Every key of index `ix`, in order."""


class PackedIndex(MutableMapping[bytes, V], Generic[V]):
    """Fixed-width bytes keys -> values: a sorted packed base plus a dict of later additions.

    The base is ``keys`` (``n * key_width`` bytes, sorted) and ``values`` (``n * value_width``
    bytes, in the same order), read with a binary search; ``decode``/``encode`` turn one value
    into bytes and back. Keys set afterwards live in a dict consulted first, in the order they
    were added. The rules only ever add to these indexes (an entry never leaves the log, and is
    indexed once), so deletion is refused, and so is a new value for a key already present.

    The incremental snapshot (controller.snapshot_parts) writes the additions in that order:
    ``persisted`` of them are in snapshot parts already, ``pending`` says how many each of
    those parts holds, and ``rebase`` swaps in a base that a compaction of the parts built,
    dropping the additions it now holds. While a base part is written, ``freeze`` sets the
    additions so far aside, unchanged, to be read outside the fold lock; later ones go to a
    new dict in front of them.
    """

    __slots__ = (
        "_added",
        "base_keys",
        "base_values",
        "count",
        "decode",
        "encode",
        "frozen",
        "ix",
        "key_width",
        "pending",
        "persisted",
        "recent",
        "rows",
        "value_width",
    )

    def __init__(
        self,
        keys: bytes,
        values: bytes,
        key_width: int,
        value_width: int,
        decode: Callable[[bytes], V],
        encode: Callable[[V], bytes],
    ) -> None:
        count, rest = divmod(len(keys), key_width)
        if rest or len(values) != count * value_width:
            raise SnapshotError(
                f"packed index: {len(keys)} key bytes and {len(values)} value bytes for key width "
                f"{key_width} and value width {value_width}, expected {count * value_width} value bytes"
            )
        self.base_keys, self.base_values, self.count = keys, values, count
        self.key_width, self.value_width = key_width, value_width
        self.decode, self.encode = decode, encode
        self.recent: dict[bytes, V] = {}
        self._added = 0  # keys in `recent` that are not in the base
        self.persisted = 0  # the first `persisted` keys of `recent` are in snapshot parts
        self.pending: list[tuple[int, int]] = []  # (part, keys of `recent` it holds), in order
        self.frozen: dict[bytes, V] | None = None  # additions set aside (freeze), never changed
        # The base as rows (snapshot parts of version 2): then base_keys/base_values are empty,
        # `count` says how many rows there are, and `recent` holds only what no part holds yet.
        self.rows: RowLookup | None = None
        self.ix = -1  # the index's number among the rows

    @classmethod
    def on_rows(
        cls,
        rows: RowLookup,
        ix: int,
        count: int,
        key_width: int,
        value_width: int,
        decode: Callable[[bytes], V],
        encode: Callable[[V], bytes],
    ) -> PackedIndex[V]:
        """An index whose `count` persisted entries are rows of index `ix`, read on demand."""
        index: PackedIndex[V] = cls(b"", b"", key_width, value_width, decode, encode)
        index.rows, index.ix, index.count = rows, ix, count
        return index

    @classmethod
    def growing(
        cls,
        mapping: Mapping[bytes, V],
        key_width: int,
        value_width: int,
        decode: Callable[[bytes], V],
        encode: Callable[[V], bytes],
    ) -> PackedIndex[V]:
        """An empty base with every entry of `mapping` as an addition, in its order.

        A plain dict is taken over, not copied (the caller replaces its reference with this)."""
        index: PackedIndex[V] = cls(b"", b"", key_width, value_width, decode, encode)
        # Key widths are checked when the additions are packed (snapshot_parts), not here,
        # under the fold lock.
        recent = mapping if type(mapping) is dict else dict(mapping.items())
        index.recent, index._added = recent, len(recent)
        return index

    def unpersisted(self) -> list[tuple[bytes, V]]:
        """The additions not yet in a snapshot part, in the order they were made."""
        return list(itertools.islice(self.recent.items(), self.persisted, None))

    def adopt_rows(self, rows: RowLookup, ix: int, count: int, written: int) -> None:
        """A base part wrote this index as `count` rows of index `ix`: they replace the packed
        base and the additions set aside, and the first `written` additions, which it held."""
        self.rows, self.ix, self.count = rows, ix, count
        self.base_keys = self.base_values = b""
        self.frozen = None
        self.recent = dict(itertools.islice(self.recent.items(), written, None))
        self.persisted, self.pending = 0, []
        self._added = len(self.recent)

    def absorb(self, written: int) -> None:
        """A part wrote the first `written` additions as rows: they leave memory."""
        if self.rows is None:
            raise SnapshotError("absorb on an index whose base is not rows")
        if written:
            self.recent = dict(itertools.islice(self.recent.items(), written, None))
            self.count += written
            self._added = len(self.recent)

    def mark_persisted(self, part: int, count: int) -> None:
        """`count` more additions are now in snapshot part `part`."""
        self.persisted += count
        self.pending.append((part, count))

    def freeze(self) -> dict[bytes, V]:
        """Set the additions so far aside (they stay readable) and start a new dict in front:
        O(1) under the fold lock, and the set-aside dict can be read outside it."""
        if self.frozen is not None:
            raise SnapshotError("the index's additions are already set aside")
        self.frozen, self.recent = self.recent, {}
        self.persisted, self.pending = 0, []
        return self.frozen

    def thaw(self) -> None:
        """Undo `freeze` (the base part was not written): one dict of additions, in order."""
        if self.frozen is not None:
            self.frozen.update(self.recent)
            self.recent, self.frozen = self.frozen, None
            self.persisted, self.pending = 0, []

    def rebase(self, keys: bytes, values: bytes, through: int) -> None:
        """Take `keys`/`values` (every entry of the parts up to `through`) as the base and
        drop the additions those parts hold (and any set aside); later ones stay, in order."""
        if self.rows is not None:
            raise SnapshotError("rebase of an index whose base is rows: parts no longer hold it")
        count, rest = divmod(len(keys), self.key_width)
        if rest or len(values) != count * self.value_width:
            raise SnapshotError(f"rebase with {len(keys)} key and {len(values)} value bytes")
        trim = sum(n for part, n in self.pending if part <= through)
        aside = len(self.frozen) if self.frozen is not None else 0
        if count != self.count + aside + trim:
            raise SnapshotError(
                f"rebase through part {through}: {count} keys, expected "
                f"{self.count} + {aside} + {trim}"
            )
        self.frozen = None
        self.recent = dict(itertools.islice(self.recent.items(), trim, None))
        self.persisted -= trim
        self.pending = [(part, n) for part, n in self.pending if part > through]
        self.base_keys, self.base_values, self.count = keys, values, count
        self._added = len(self.recent)

    def _position(self, key: bytes) -> int:
        """Where `key` is, or would be inserted, in the sorted base."""
        w, keys = self.key_width, self.base_keys
        lo, hi = 0, self.count
        while lo < hi:
            mid = (lo + hi) >> 1
            if keys[mid * w : mid * w + w] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _find(self, key: bytes) -> int:
        """Position of `key` in the base, or -1."""
        w = self.key_width
        if len(key) != w:
            return -1
        i = self._position(key)
        return i if i < self.count and self.base_keys[i * w : i * w + w] == key else -1

    def _base_value(self, i: int) -> V:
        return self.decode(self.base_values[i * self.value_width : (i + 1) * self.value_width])

    def _base_get(self, key: bytes) -> bytes | None:
        """The encoded value of `key` in the base (packed or rows), or None."""
        if self.rows is not None:
            if len(key) != self.key_width:
                return None
            return self.rows.get(self.ix, key)
        i = self._find(key)
        if i < 0:
            return None
        return self.base_values[i * self.value_width : (i + 1) * self.value_width]

    def __getitem__(self, key: bytes) -> V:
        if key in self.recent:
            return self.recent[key]
        frozen = self.frozen
        if frozen is not None and key in frozen:
            return frozen[key]
        found = self._base_get(key)
        if found is None:
            raise KeyError(key)
        return self.decode(found)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes):
            return False
        frozen = self.frozen
        return (
            key in self.recent
            or (frozen is not None and key in frozen)
            or self._base_get(key) is not None
        )

    def __setitem__(self, key: bytes, value: V) -> None:
        if len(key) != self.key_width:
            raise ValueError(f"key is {len(key)} bytes, expected {self.key_width}")
        if key in self.recent:
            old = self.recent[key]
        elif self.frozen is not None and key in self.frozen:
            old = self.frozen[key]
        elif (found := self._base_get(key)) is not None:
            old = self.decode(found)
        else:
            self._added += 1
            self.recent[key] = value
            return
        if old != value:
            raise ValueError(f"key {key.hex()} is already indexed with another value")

    def __delitem__(self, key: bytes) -> None:
        raise TypeError("a packed index only grows: entries never leave the log")

    def __len__(self) -> int:
        return self.count + self._added

    def __iter__(self) -> Iterator[bytes]:
        if self.rows is not None:
            yield from self.rows.keys(self.ix)
            yield from self.recent  # additions never repeat a row's key (__setitem__)
            return
        w, keys = self.key_width, self.base_keys
        for i in range(self.count):
            yield keys[i * w : i * w + w]
        for key in itertools.chain(self.frozen or (), self.recent):
            if self._find(key) < 0:
                yield key

    def __repr__(self) -> str:
        return f"PackedIndex({len(self)} entries, {len(self.recent)} since the snapshot)"


def pack(
    mapping: Mapping[bytes, V],
    key_width: int,
    value_width: int,
    decode: Callable[[bytes], V],
    encode: Callable[[V], bytes],
) -> PackedIndex[V]:
    """A PackedIndex with every entry of `mapping` in its base (merging, when it is one)."""
    if isinstance(mapping, PackedIndex) and mapping.key_width == key_width and mapping.rows is None:
        return _merge(mapping, value_width, decode, encode)
    keys = sorted(mapping)
    keys_blob = b"".join(keys)
    if len(keys_blob) != len(keys) * key_width:
        raise SnapshotError(f"an index key is not {key_width} bytes")
    values = [mapping[k] for k in keys]
    if encode is seq_encode:  # the big ones: seqs as one array, not a million small bytes
        seqs = array.array("Q", typing.cast(list[int], values))
        if sys.byteorder != "little":
            seqs.byteswap()
        values_blob = seqs.tobytes()
    else:
        values_blob = b"".join(map(encode, values))
    return PackedIndex(keys_blob, values_blob, key_width, value_width, decode, encode)


def merge_sorted(
    base_keys: bytes,
    base_values: bytes,
    key_width: int,
    value_width: int,
    additions: Sequence[tuple[bytes, bytes]],
) -> tuple[bytes, bytes]:
    """The base with `additions` (sorted (key, encoded value) pairs, none of them in the base)
    merged in: a binary search per addition and one copy of the base, so merging a few
    thousand keys into a million costs about as much as copying the base."""
    kw, vw = key_width, value_width
    count = len(base_keys) // kw
    key_parts: list[bytes] = []
    value_parts: list[bytes] = []
    at = 0
    previous = b""
    for key, value in additions:
        if len(key) != kw or len(value) != vw or key <= previous:
            raise SnapshotError("index additions are not sorted, distinct keys of the widths")
        previous = key
        lo, hi = at, count
        while lo < hi:
            mid = (lo + hi) >> 1
            if base_keys[mid * kw : mid * kw + kw] < key:
                lo = mid + 1
            else:
                hi = mid
        if lo < count and base_keys[lo * kw : lo * kw + kw] == key:
            raise SnapshotError(f"index key {key.hex()} is in the base and added again")
        key_parts += [base_keys[at * kw : lo * kw], key]
        value_parts += [base_values[at * vw : lo * vw], value]
        at = lo
    key_parts.append(base_keys[at * kw :])
    value_parts.append(base_values[at * vw :])
    return b"".join(key_parts), b"".join(value_parts)


def _merge(
    index: PackedIndex[V],
    value_width: int,
    decode: Callable[[bytes], V],
    encode: Callable[[V], bytes],
) -> PackedIndex[V]:
    kw, vw = index.key_width, value_width
    if index.value_width == vw:
        values = bytearray(index.base_values)
    else:  # another value encoding: re-encode the base (never on the hot path)
        values = bytearray(b"".join(encode(index._base_value(i)) for i in range(index.count)))
    new: list[tuple[int, bytes, bytes]] = []
    for key, value in itertools.chain((index.frozen or {}).items(), index.recent.items()):
        i = index._find(key)
        if i >= 0:  # an overwritten base value
            values[i * vw : (i + 1) * vw] = encode(value)
        else:
            new.append((index._position(key), key, encode(value)))
    new.sort()
    key_parts: list[bytes] = []
    value_parts: list[bytes] = []
    at = 0
    for pos, key, encoded in new:
        key_parts += [index.base_keys[at * kw : pos * kw], key]
        value_parts += [bytes(values[at * vw : pos * vw]), encoded]
        at = pos
    key_parts.append(index.base_keys[at * kw :])
    value_parts.append(bytes(values[at * vw :]))
    return PackedIndex(b"".join(key_parts), b"".join(value_parts), kw, vw, decode, encode)


def seq_decode(b: bytes) -> int:
    return int.from_bytes(b, "little")


def seq_encode(v: int) -> bytes:
    return v.to_bytes(SEQ_WIDTH, "little")
