"""The incremental snapshot: a chain of parts, each holding what changed since the one before.

Issue #19: rewriting the whole state at every snapshot cost 3.8 s at a million entries, with the
fold held. A snapshot now writes one *part* holding only what changed since the previous part:

* the entries folded since then, as additions to the four per-entry indexes (``event_ids``,
  ``entry_seqs``, ``entry_types``, ``evals``), taken from the order the
  :class:`~controller.packed_index.PackedIndex` recorded them in. A part of version 2 holds
  only their counts: the additions themselves are rows (controller.index_rows) written in the
  part's transaction, which a restart does not read. Version 1 held them as sorted sections,
  and is still read (the next part is then a base of version 2);
* the proposals an entry named since then (the rules change a proposal only when folding an
  entry that names it, and ``ControllerState.fold`` then sets its ``last_seq``, which the
  :class:`ChangeLog` records), each with its rollout record and its ``last_seq``;
* the small fields (keys, policies, kill switches, counts), whole: they grow with live state,
  not with history.

A *base* part (``size_before == 0``) holds everything. ``merge_parts`` folds a run of parts into
one (what the compaction in controller.snapshot_store does, off the fold), and
``state_from_parts`` rebuilds the state from a base and the parts after it.

The fold lock is held only by :func:`capture` (copying references and encoding the changed
proposals, O(what changed)) and :func:`after_write` (bookkeeping, and after a base part a swap
of the indexes' packed bases); encoding, hashing and writing happen outside it.

Pure: no I/O. The encoding reuses controller.snapshot's codecs, so a change to any class a part
holds changes the fingerprint and old parts are refused (the caller then replays the log).
"""

from __future__ import annotations

import array
import gc
import hashlib
import heapq
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.errors import SnapshotError
from controller.packed_index import (
    SEQ_WIDTH,
    PackedIndex,
    RowLookup,
    merge_sorted,
    seq_decode,
    seq_encode,
)
from controller.snapshot import (
    _LEDGER_FIELDS,
    _PROPOSAL_LAZY,
    _PROPOSAL_LAZY_CODECS,
    _TYPE_CODE_BYTES,
    EVENT_ID_SIZE,
    SCHEMA_FINGERPRINT,
    TYPE_TABLE,
    StoredProposal,
    _Batch,
    _codec,
    _fail,
    _hash_value,
    _json,
    _type_decode,
    _type_encode,
    frame,
    unframe,
)
from controller.state import ControllerState, RolloutRecord
from ledger.formats import HASH_SIZE
from ledger.state import LedgerState, ProposalState

PART_MAGIC = b"STWCPART"
PART_VERSION = 2  # 2: the indexes are rows beside the parts; 1: sorted sections inside them
ROWS_VERSION = 2
_SECTIONS = 15
_ROLLOUT_ENC, _ROLLOUT_DEC = _codec(RolloutRecord, "RolloutRecord")
_NO_STAMP = -1


class ChangeLog(dict[bytes, int]):
    """``ControllerState.last_seq`` (proposal -> seq of the last entry naming it) that records
    which proposals were named since the last part, and which part that was."""

    __slots__ = ("changed", "size", "through")

    def __init__(
        self,
        items: Mapping[bytes, int] | None = None,
        *,
        through: int = -1,
        size: int = 0,
        tracking: bool = True,
    ) -> None:
        super().__init__(items or {})
        # None (`tracking` False) until a base is begun: what a replay from the log names is
        # every proposal, and a base takes them all anyway. The Replayer starts its state so,
        # because turning a replayed plain dict into a ChangeLog copied it under the fold
        # lock, and a set of every proposal would be freed there.
        self.changed: set[bytes] | None = set() if tracking else None
        self.through = through  # the last part written from this state (-1: none yet)
        self.size = size  # ledger.size at that part

    def __setitem__(self, key: bytes, value: int) -> None:
        changed = self.changed
        if changed is not None:
            changed.add(key)
        dict.__setitem__(self, key, value)

    def take_changed(self) -> set[bytes]:
        """The proposals named since the last call (or since tracking began), and track anew."""
        changed, self.changed = self.changed, set()
        return changed if changed is not None else set()


# The four per-entry indexes: (attribute, key width, value width, decode, encode).
_IndexSpec = tuple[str, int, int, Callable[[bytes], Any], Callable[[Any], bytes]]
INDEXES: tuple[_IndexSpec, ...] = (
    ("event_ids", EVENT_ID_SIZE, SEQ_WIDTH, seq_decode, seq_encode),
    ("entry_seqs", HASH_SIZE, SEQ_WIDTH, seq_decode, seq_encode),
    ("entry_types", HASH_SIZE, 1, _type_decode, _type_encode),
    ("evals", HASH_SIZE, HASH_SIZE, _hash_value, _hash_value),
)


@dataclass(frozen=True)
class ProposalRow:
    """One proposal in a part: identity, ``last_seq`` (stamp), evidence fragments, rollout."""

    entry_hash: bytes
    seq: int
    decision_floor: int
    stamp: int
    proposer: str
    policy_id: str
    docs: bytes  # the evidence is docs[at : at + sum(lengths)]: one fragment per lazy field
    at: int
    lengths: tuple[int, ...]
    rollout: Any  # the encoded RolloutRecord, or None
    # The proposal's target (namespace, deployment): a column in version 2, so that a restart
    # knows which proposals name which target without decoding their evidence; None in rows
    # read from version 1.
    target: tuple[str, str] | None = None

    def evidence(self) -> bytes:
        return self.docs[self.at : self.at + sum(self.lengths)]


@dataclass(frozen=True)
class Part:
    """A decoded part: parts ``first`` to ``last`` of a chain, merged (one part: first == last)."""

    first: int
    last: int
    size_before: int  # ledger size before its entries (0: a base, holding everything)
    size: int
    applied: int
    invalid: int
    ledger: dict[str, Any]  # the encoded small fields of LedgerState
    proposals: tuple[ProposalRow, ...]
    # Per index: sorted keys and their values, the entries this part adds (version 1; empty
    # in version 2, whose indexes are rows).
    indexes: dict[str, tuple[bytes, bytes]]
    # Version 2: per index, how many rows it has once this part is written; None: version 1.
    index_rows: dict[str, int] | None = None

    @property
    def entries(self) -> int:
        return self.size - self.size_before


@dataclass
class Capture:
    """What `capture` took under the fold lock; encoded and written outside it."""

    part: int
    full: bool
    size_before: int
    size: int
    applied: int
    invalid: int
    ledger: dict[str, Any]
    proposals: list[ProposalRow] | _Ordered  # a base's: ordered outside the lock
    additions: dict[str, list[tuple[bytes, Any]]]  # per index, in the order they were made
    aside: dict[str, dict[bytes, Any]]  # full only: the additions set aside, read unlocked
    bases: dict[str, tuple[bytes, bytes]]  # full only: the packed bases they merge into
    changed: set[bytes]
    counts: dict[str, int]  # per index, its rows once this part is written
    merged: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # full: set by encode
    # Per index, the (key, encoded value) rows to insert with the part, set by encode_capture
    # (a base's sorted by key, so that the table's B-tree is filled in order).
    rows: dict[str, Iterable[tuple[bytes, bytes]]] = field(default_factory=dict)


def _index(ls: LedgerState, spec: _IndexSpec) -> PackedIndex[Any]:
    name, kw, vw, dec, enc = spec
    current = getattr(ls, name)
    if isinstance(current, PackedIndex) and current.key_width == kw and current.value_width == vw:
        return current
    packed: PackedIndex[Any] = PackedIndex.growing(current, kw, vw, dec, enc)
    setattr(ls, name, packed)
    return packed


def tracked(state: ControllerState) -> ChangeLog | None:
    return state.last_seq if isinstance(state.last_seq, ChangeLog) else None


@dataclass
class FullPreparation:
    """A base part taken in steps, the fold lock released between them (`prepare_step`): the
    proposals encoded so far. The indexes' additions were set aside by `begin_full` (read
    outside the lock); what the fold changes meanwhile is taken again by `capture`."""

    rows: dict[bytes, ProposalRow]
    # Every proposal when the base was begun, in the order they were submitted; `capture`
    # extends it with those submitted since, and the part holds them in this order.
    order: list[bytes]
    left: int  # order[:left] are still to be encoded (the steps go from the end)


def _refuse_rows_base(ls: LedgerState) -> None:
    """A base holds every index entry, and an index on rows holds most of its entries only in
    the rows of the chain the base would replace: that happens only when another writer moved
    the chain under this controller (its head is not the part this state last wrote)."""
    for name, *_ in INDEXES:
        index = getattr(ls, name)
        if isinstance(index, PackedIndex) and index.rows is not None:
            raise SnapshotError(
                "the snapshot chain was replaced under this controller (its head is not the "
                "part this controller wrote last); restart the controller to load it"
            )


def begin_full(state: ControllerState) -> FullPreparation:
    """Start a base (lock held): last_seq becomes a ChangeLog, the indexes PackedIndexes
    (a dict is taken over, not copied) with their additions set aside; O(proposals) to list
    them, and nothing per entry."""
    _refuse_rows_base(state.ledger)
    log = _start_tracking(state)
    log.take_changed()  # everything is taken; from here on, what the steps must take again
    for spec in INDEXES:
        index = _index(state.ledger, spec)
        index.thaw()  # a base attempted before and not written
        index.freeze()
    # The one O(proposals) copy of a base under the lock (begin_full held it 1.2 ms at 55,918
    # proposals, a million entries; with the copy of last_seq into a ChangeLog and a second
    # listing in `capture`, 4.2-4.8 ms and 2.1-2.3 ms): `capture` extends it, never lists again.
    order = list(state.ledger.proposals)
    return FullPreparation(rows={}, order=order, left=len(order))


def prepare_step(state: ControllerState, prep: FullPreparation, *, proposals: int = 64) -> bool:
    """Encode up to `proposals` more proposals (lock held; a few ms at the default, measured
    in bench.replay); True when none is left to encode."""
    ls, log = state.ledger, tracked(state)
    if log is None:
        raise SnapshotError("prepare_step on a state begin_full did not start")
    start = max(0, prep.left - proposals)
    for h in prep.order[start : prep.left]:
        prep.rows[h] = _row(ls.proposals[h], log.get(h), state.rollouts.get(h))
    prep.left = start
    return start == 0


def _submitted_since(proposals: Mapping[bytes, ProposalState], known: int) -> list[bytes]:
    """The proposals after the first `known`, in the order they were submitted. A ledger
    state never drops a proposal, so they are the last ones its dict holds."""
    added = len(proposals) - known
    if added < 0:
        raise SnapshotError(f"{known} proposals when the base was begun, {len(proposals)} now")
    if not added:
        return []
    if type(proposals) is not dict:
        return list(proposals)[known:]
    newest = list(itertools.islice(reversed(proposals), added))
    newest.reverse()
    return newest


def _start_tracking(state: ControllerState) -> ChangeLog:
    log = tracked(state)
    if log is None:
        log = ChangeLog(state.last_seq)
        state.last_seq = log
    return log


def capture(
    state: ControllerState, part: int, *, full: bool, prepared: FullPreparation | None = None
) -> Capture:
    """What part `part` holds; call with the fold lock held. O(what changed) unless `full`.

    A delta needs the state's ChangeLog from the part before (`tracked`). `full` takes
    everything and starts tracking (indexes become PackedIndexes, last_seq a ChangeLog);
    with `prepared` (begin_full, prepare_step) it takes only what changed since then."""
    ls = state.ledger
    log_before = tracked(state)
    if not full and (log_before is None or log_before.through < 0):
        raise SnapshotError("a delta part of a state that no part was written from")
    if full:
        _refuse_rows_base(ls)
    log = _start_tracking(state)
    indexes = [_index(ls, spec) for spec in INDEXES]
    rows: list[ProposalRow] | _Ordered
    changed = log.take_changed()
    if full:
        # Under the lock only what the fold changed since the steps: every proposal submitted
        # since is in `changed` too. The rows are put in order outside it (encode_capture):
        # done here, that loop held the lock 229 ms at ten million entries.
        if prepared is None:
            order = list(ls.proposals)  # in the order they were submitted
            ready, todo = {}, order
        else:
            order = prepared.order
            order.extend(_submitted_since(ls.proposals, len(order)))
            ready, todo = prepared.rows, [h for h in changed if h in ls.proposals]
        fresh = {h: _row(ls.proposals[h], log.get(h), state.rollouts.get(h)) for h in todo}
        rows = _Ordered(order, fresh, ready)
        if prepared is None:  # at once: set the additions so far aside now
            for ix in indexes:
                ix.thaw()
                ix.freeze()
        aside = {spec[0]: ix.frozen or {} for spec, ix in zip(INDEXES, indexes, strict=True)}
        additions = {
            spec[0]: list(ix.recent.items()) for spec, ix in zip(INDEXES, indexes, strict=True)
        }
        bases = {
            spec[0]: (ix.base_keys, ix.base_values)
            for spec, ix in zip(INDEXES, indexes, strict=True)
        }
        counts = {
            spec[0]: ix.count + len(aside[spec[0]]) + len(additions[spec[0]])
            for spec, ix in zip(INDEXES, indexes, strict=True)
        }
    else:
        proposals = sorted((ls.proposals[h] for h in changed), key=lambda p: p.seq)
        rows = [_row(p, log.get(p.entry_hash), state.rollouts.get(p.entry_hash)) for p in proposals]
        additions = {spec[0]: ix.unpersisted() for spec, ix in zip(INDEXES, indexes, strict=True)}
        bases, aside = {}, {}
        counts = {
            spec[0]: ix.count + len(additions[spec[0]])
            for spec, ix in zip(INDEXES, indexes, strict=True)
        }
    return Capture(
        part=part,
        full=full,
        size_before=0 if full else log.size,
        size=ls.size,
        applied=state.applied,
        invalid=state.invalid,
        ledger={name: enc(getattr(ls, name)) for name, (enc, _d) in _LEDGER_FIELDS.items()},
        proposals=rows,
        additions=additions,
        aside=aside,
        bases=bases,
        changed=changed,
        counts=counts,
    )


@dataclass(frozen=True)
class _Ordered:
    """A base's proposal rows, put in order when the part is encoded (outside the lock)."""

    order: list[bytes]
    fresh: dict[bytes, ProposalRow]
    ready: dict[bytes, ProposalRow]

    def rows(self) -> list[ProposalRow]:
        fresh, ready = self.fresh, self.ready
        return [fresh[h] if h in fresh else ready[h] for h in self.order]


def _row(p: ProposalState, stamp: int | None, rollout: RolloutRecord | None) -> ProposalRow:
    d = p.__dict__
    kept = getattr(type(p), "kept_evidence", None)  # restored from columns (snapshot_restore)
    stored = kept(p, stamp) if kept is not None else None
    if stored is not None:
        docs, at, lengths = stored  # untouched since loaded
    elif "_docs" in d and d.get("_stamp") == stamp and stamp is not None:
        docs, at, lengths = d["_docs"], d["_at"], tuple(d["_lengths"])  # untouched since loaded
    else:
        parts = [
            _json(enc(getattr(p, n))).encode()
            for n, (enc, _dec) in zip(_PROPOSAL_LAZY, _PROPOSAL_LAZY_CODECS, strict=True)
        ]
        docs, at, lengths = b"".join(parts), 0, tuple(len(x) for x in parts)
    if len(p.entry_hash) != HASH_SIZE:
        raise SnapshotError(f"proposal hash is {len(p.entry_hash)} bytes, expected {HASH_SIZE}")
    known = getattr(type(p), "known_target", None)  # from columns, without the evidence
    target = known(p) if known is not None else p.proposal.target
    return ProposalRow(
        target=(target.namespace, target.deployment),
        entry_hash=p.entry_hash,
        seq=p.seq,
        decision_floor=p.decision_floor,
        stamp=_NO_STAMP if stamp is None else stamp,
        proposer=p.proposer,
        policy_id=p.policy_id,
        docs=docs,
        at=at,
        lengths=lengths,
        rollout=None if rollout is None else _ROLLOUT_ENC(rollout),
    )


def _packed(items: Mapping[bytes, Any], spec: _IndexSpec) -> tuple[bytes, bytes]:
    """Sorted keys and their values, packed (the version-1 sections)."""
    keys, values, _count = _packed_runs(items, items.get, {}, spec)
    return b"".join(keys), b"".join(values)


# A base's index keys (ten million 16- and 32-byte hashes at ten million entries, per index)
# were put in order by one `sorted()`, which holds the interpreter from start to end: no other
# thread ran meanwhile, a kill switch's fold included (bench.replay: 972 ms at a million
# entries, on a busy minute). By the first byte into 256 buckets, each sorted apart, the
# interpreter changes hands between them, and the order is the same (bytes compare byte by
# byte, so the first byte orders the buckets). Keys are hashes: the buckets are even.
KEY_BUCKETS = 256


def _in_key_order(keys: Iterable[bytes]) -> Iterator[list[bytes]]:
    """`keys` sorted, as consecutive runs (one per first byte)."""
    buckets: list[list[bytes]] = [[] for _ in range(KEY_BUCKETS)]
    try:
        for k in keys:
            buckets[k[0]].append(k)
    except IndexError:
        raise SnapshotError("an index key is empty") from None
    for i, run in enumerate(buckets):
        if run:
            buckets[i] = []  # each run is freed once used, not all at the end
            run.sort()
            yield run


def _packed_runs(
    keys: Iterable[bytes],
    get: Callable[[bytes], Any],
    added: Mapping[bytes, Any],
    spec: _IndexSpec,
) -> tuple[list[bytes], list[bytes], int]:
    """The keys in order and their values (`get(key)`, or `added[key]` where it gives None),
    packed a run at a time: lists of key and value bytes, and how many. Checked: every key
    and value has the index's width. Keys sorted alone and values looked up, seqs through one
    array per run rather than a call per value: for a million additions 0.9 s, where sorting
    (key, value) pairs and a call per value took 1.7 s (bench.replay, 1M base)."""
    name, kw, vw, _dec, enc = spec
    key_runs: list[bytes] = []
    value_runs: list[bytes] = []
    count = 0
    for run in _in_key_order(keys):
        values = [get(k) for k in run]
        if added:
            values = [v if v is not None else added[k] for k, v in zip(run, values, strict=True)]
        packed = b"".join(run)
        if len(packed) != kw * len(run):
            raise SnapshotError(f"an {name} key is not {kw} bytes")
        if enc is seq_encode:
            seqs = array.array("Q", values)
            if sys.byteorder != "little":
                seqs.byteswap()
            packed_values = seqs.tobytes()
        else:
            packed_values = b"".join([enc(v) for v in values])
        if len(packed_values) != vw * len(run):
            raise SnapshotError(f"an {name} value is not {vw} bytes")
        key_runs.append(packed)
        value_runs.append(packed_values)
        count += len(run)
    return key_runs, value_runs, count


def _pairs(keys: bytes, values: bytes, kw: int, vw: int) -> Iterator[tuple[bytes, bytes]]:
    for i in range(len(keys) // kw):
        yield keys[i * kw : i * kw + kw], values[i * vw : i * vw + vw]


def _run_pairs(
    keys: list[bytes], values: list[bytes], kw: int, vw: int
) -> Iterator[tuple[bytes, bytes]]:
    for k, v in zip(keys, values, strict=True):
        yield from _pairs(k, v, kw, vw)


def release_base(c: Capture) -> None:
    """Empty what a written base captured, an entry at a time (after `after_write`, outside
    the fold lock). Dropped at once, its set-aside index dicts (ten million entries each at
    ten million entries) and its proposal rows are freed by one deallocation that holds the
    interpreter throughout: 130 ms per five million index entries measured here, during which
    no thread runs. Emptied in a loop, the interpreter changes hands as it goes."""
    for additions in c.aside.values():
        _empty(additions)
    if isinstance(c.proposals, _Ordered):
        _empty(c.proposals.ready)
        _empty(c.proposals.fresh)
        order = c.proposals.order
        while order:
            del order[-4096:]


def _empty(d: dict[Any, Any]) -> None:
    pop = d.popitem
    for _ in range(len(d)):
        pop()


def encode_capture(c: Capture) -> PartBlobs:
    """The part blob of a capture (outside the fold lock), version 2: the index additions go
    to ``c.rows``, written beside the part in its transaction."""
    for spec in INDEXES:
        name, kw, vw, _dec, enc = spec
        if c.full:
            # A base: millions of rows, handed to the insert in key order (the table's B-tree
            # fills page by page) and one at a time (a list of ten million pairs per index
            # would hold gigabytes): the packed base of a chain of version 1, if any, merged
            # with the additions, both sorted. The set-aside dict is read, never copied (a
            # copy of ten million entries is one call that holds the interpreter).
            aside = c.aside.get(name, {})
            added = dict(c.additions[name])
            if len(added) != len(c.additions[name]) or any(k in aside for k in added):
                raise SnapshotError(f"an {name} key is added twice")
            base_keys, base_values = c.bases.get(name, (b"", b""))
            key_runs, value_runs, count = _packed_runs(
                itertools.chain(aside, added), aside.get, added, spec
            )
            total = len(base_keys) // kw + count
            c.rows[name] = heapq.merge(
                _pairs(base_keys, base_values, kw, vw), _run_pairs(key_runs, value_runs, kw, vw)
            )
        else:
            items = dict(c.aside.get(name, {}))
            items.update(c.additions[name])
            if len(items) != len(c.aside.get(name, {})) + len(c.additions[name]):
                raise SnapshotError(f"an {name} key is added twice")
            pairs = [(k, enc(v)) for k, v in items.items()]
            if any(len(k) != kw or len(v) != vw for k, v in pairs):
                raise SnapshotError(f"an {name} key or value is not {kw} / {vw} bytes")
            total = c.counts[name] - len(c.additions[name]) + len(pairs)
            c.rows[name] = pairs
        if total != c.counts[name]:
            raise SnapshotError(f"{name}: {total} rows for a count of {c.counts[name]}")
    part = Part(
        first=c.part,
        last=c.part,
        size_before=c.size_before,
        size=c.size,
        applied=c.applied,
        invalid=c.invalid,
        ledger=c.ledger,
        proposals=tuple(c.proposals.rows() if isinstance(c.proposals, _Ordered) else c.proposals),
        indexes={name: (b"", b"") for name, *_ in INDEXES},
        index_rows=dict(c.counts),
    )
    return encode_part(part)


def encode_capture_v1(c: Capture) -> PartBlobs:
    """The part blob of a capture in version 1 (index additions as sorted sections), which
    parts were before version 2; kept for the tests that read old chains. For a full capture
    the indexes' merged bases are kept in ``c.merged``."""
    indexes: dict[str, tuple[bytes, bytes]] = {}
    for spec in INDEXES:
        name, kw, vw = spec[0], spec[1], spec[2]
        items = dict(c.aside.get(name, {}))
        items.update(c.additions[name])
        if len(items) != len(c.aside.get(name, {})) + len(c.additions[name]):
            raise SnapshotError(f"an {name} key is added twice")
        keys, values = _packed(items, spec)
        base_keys, base_values = c.bases.get(name, (b"", b""))
        if base_keys:
            pairs = [
                (keys[i * kw : i * kw + kw], values[i * vw : i * vw + vw])
                for i in range(len(keys) // kw)
            ]
            keys, values = merge_sorted(base_keys, base_values, kw, vw, pairs)
        indexes[name] = (keys, values)
    if indexes["entry_seqs"][0] != indexes["entry_types"][0]:
        raise SnapshotError("entry_types and entry_seqs name different entries")
    if c.full:
        c.merged = indexes
    part = Part(
        first=c.part,
        last=c.part,
        size_before=c.size_before,
        size=c.size,
        applied=c.applied,
        invalid=c.invalid,
        ledger=c.ledger,
        proposals=tuple(c.proposals.rows() if isinstance(c.proposals, _Ordered) else c.proposals),
        indexes=indexes,
    )
    return encode_part(part)


def after_write(state: ControllerState, c: Capture, rows: RowLookup | None = None) -> None:
    """The part of `c` is durable: record it in the state's tracking (fold lock held). With
    `rows` (a version 2 part, whose index additions are those rows now) they leave memory."""
    log = tracked(state)
    if log is None:
        return
    if c.rows and rows is None:
        raise SnapshotError("a part whose indexes are rows, recorded without those rows")
    log.through, log.size = c.part, c.size
    for ix, spec in enumerate(INDEXES):
        index = getattr(state.ledger, spec[0])
        if not isinstance(index, PackedIndex):
            continue
        added = len(c.additions[spec[0]])
        if rows is not None:
            if c.full:
                index.adopt_rows(rows, ix, c.counts[spec[0]], added)
            else:
                index.absorb(added)
        elif c.full:
            index.mark_persisted(c.part, added)
            keys, values = c.merged[spec[0]]
            index.rebase(keys, values, c.part)
        else:
            index.mark_persisted(c.part, added)


def after_failure(state: ControllerState, c: Capture) -> None:
    """The part of `c` was not written: its proposals are still to be written (lock held)."""
    log = tracked(state)
    if log is not None:
        if log.changed is None:
            log.changed = set(c.changed)
        else:
            log.changed |= c.changed
    if c.full:
        for spec in INDEXES:
            index = getattr(state.ledger, spec[0])
            if isinstance(index, PackedIndex):
                index.thaw()


def rebase(state: ControllerState, base: Part) -> bool:
    """Swap in the packed indexes of `base` (a compaction's new base, parts up to
    ``base.last``), dropping the additions they hold; lock held. False if the state is not
    the one those parts were written from (it was replaced since)."""
    log = tracked(state)
    if log is None or base.size_before != 0 or base.last > log.through:
        return False
    if base.index_rows is not None:
        return False  # version 2: the indexes are rows already, nothing to swap in
    for name, kw, _vw, _dec, _enc in INDEXES:
        index = getattr(state.ledger, name)
        if not isinstance(index, PackedIndex):
            return False
        if index.frozen is not None:  # a base is being written: it will rebase itself
            return False
        held = sum(n for part, n in index.pending if part <= base.last) + index.count
        if held != len(base.indexes[name][0]) // kw:
            return False
    for spec in INDEXES:
        keys, values = base.indexes[spec[0]]
        getattr(state.ledger, spec[0]).rebase(keys, values, base.last)
    return True


# --------------------------------------------------------------------------------------------
# The part blob: PART_MAGIC | version (u16) | SHA-256 of the rest | sections (u64 length, bytes)


@dataclass(frozen=True)
class PartBlobs:
    """A part as stored: the framed sections, and (version 2) the proposals' evidence apart,
    which a restart does not read (its length and SHA-256 are in the sections' meta)."""

    main: bytes
    docs: bytes = b""

    @property
    def size(self) -> int:
        return len(self.main) + len(self.docs)


def docs_digest(docs: bytes) -> str:
    return hashlib.sha256(docs).hexdigest()


def encode_part(part: Part) -> PartBlobs:
    names: dict[str, int] = {}
    ints = array.array("q")
    name_idx = array.array("I")
    docs: list[bytes] = []
    at = 0
    for r in part.proposals:
        doc = r.evidence()
        ints.extend((r.seq, r.decision_floor, r.stamp, at, *r.lengths))
        name_idx.append(names.setdefault(r.proposer, len(names)))
        name_idx.append(names.setdefault(r.policy_id, len(names)))
        if part.index_rows is not None:  # version 2: the target too
            if r.target is None:
                raise SnapshotError(f"proposal {r.entry_hash.hex()} without its target")
            name_idx.append(names.setdefault(r.target[0], len(names)))
            name_idx.append(names.setdefault(r.target[1], len(names)))
        docs.append(doc)
        at += len(doc)
    if sys.byteorder != "little":
        ints.byteswap()
        name_idx.byteswap()
    meta = {
        "schema": SCHEMA_FINGERPRINT,
        "types": TYPE_TABLE,
        "first": part.first,
        "last": part.last,
        "size_before": part.size_before,
        "size": part.size,
        "applied": part.applied,
        "invalid": part.invalid,
        "ledger": part.ledger,
    }
    evidence = b"".join(docs)
    if part.index_rows is not None:  # version 2: the evidence apart
        meta["index_rows"] = part.index_rows
        meta["docs"] = {"length": len(evidence), "sha256": docs_digest(evidence)}
    ix = part.indexes
    sections = [
        _json(meta).encode(),
        b"".join(r.entry_hash for r in part.proposals),
        ints.tobytes(),
        json.dumps(list(names)).encode(),
        name_idx.tobytes(),
        evidence if part.index_rows is None else b"",
        _json([r.rollout for r in part.proposals]).encode(),
        ix["event_ids"][0],
        ix["event_ids"][1],
        ix["entry_seqs"][0],
        ix["entry_seqs"][1],
        ix["entry_types"][1],
        ix["evals"][0],
        ix["evals"][1],
        ix["entry_types"][0],
    ]
    if part.index_rows is None:
        return PartBlobs(frame(sections, PART_MAGIC, 1))
    return PartBlobs(frame(sections, PART_MAGIC, ROWS_VERSION), evidence)


def part_version(blob: bytes) -> int:
    """The version a part's main blob says it is (checked by `part_sections`)."""
    return int.from_bytes(blob[8:10], "little") if len(blob) >= 10 else -1


def part_sections(blob: bytes) -> list[bytes]:
    """The sections of a part's main blob, its digest checked (version 1 or 2)."""
    version = part_version(blob)
    if version not in (1, ROWS_VERSION):
        version = PART_VERSION  # unframe names the version found and the one expected
    return unframe(blob, PART_MAGIC, version, _SECTIONS, "part")


def check_docs(meta: dict[str, Any], docs: bytes) -> None:
    """The evidence of a version 2 part is the one its meta describes."""
    described = meta.get("docs")
    if (
        not isinstance(described, dict)
        or type(described.get("length")) is not int
        or not isinstance(described.get("sha256"), str)
    ):
        raise _fail("part docs", described)
    if len(docs) != described["length"] or docs_digest(docs) != described["sha256"]:
        raise SnapshotError(
            f"part evidence is {len(docs)} bytes that do not match its digest "
            f"(expected {described['length']} bytes): truncated or damaged"
        )


def decode_part(blobs: PartBlobs | bytes) -> Part:
    """The part blobs hold; SnapshotError if they are not what this code wrote, intact."""
    if isinstance(blobs, bytes):
        blobs = PartBlobs(blobs)
    sections = part_sections(blobs.main)
    was_enabled = gc.isenabled()
    gc.disable()  # as in decode_state: many acyclic objects, no collector walks meanwhile
    try:
        return _decode_sections(sections, blobs.docs)
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise SnapshotError(f"part does not decode: {exc}") from exc
    finally:
        if was_enabled:
            gc.enable()


def _int(meta: dict[str, Any], name: str) -> int:
    v = meta.get(name)
    if type(v) is not int or v < 0:
        raise _fail(f"part {name}", v)
    return v


@dataclass(frozen=True)
class Columns:
    """A part decoded but for its proposals, which stay in columns (one row per proposal):
    what `decode_part` builds rows from, and a restart (controller.snapshot_restore) builds
    proposals from without rows."""

    meta: dict[str, Any]
    first: int
    last: int
    size_before: int
    size: int
    ledger: dict[str, Any]
    index_rows: dict[str, int] | None
    indexes: dict[str, tuple[bytes, bytes]]
    count: int  # proposals
    hashes: bytes  # count * 32
    ints: list[int]  # count * PER_ROW: seq, decision floor, stamp, evidence offset, lengths
    names: list[str]
    name_idx: list[
        int
    ]  # count * NAMES_PER_ROW: proposer, policy id (version 2: namespace, deployment)
    names_per_row: int
    rollouts: list[Any]  # count: the encoded RolloutRecord or None
    docs: bytes  # version 1: the evidence; version 2: empty (it is apart)


PER_ROW = 4 + len(_PROPOSAL_LAZY)


def _columns(sections: list[bytes]) -> Columns:
    (
        meta_json,
        hashes,
        prop_ints,
        prop_names,
        prop_name_idx,
        docs,
        rollouts_json,
        eid_keys,
        eid_vals,
        entry_keys,
        seq_vals,
        type_vals,
        eval_keys,
        eval_vals,
        type_keys,
    ) = sections
    meta = json.loads(meta_json)
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA_FINGERPRINT:
        raise SnapshotError("part schema fingerprint differs: written by other state definitions")
    if meta.get("index_rows") is not None and docs:  # version 2: the evidence is apart
        raise SnapshotError("part of version 2 holds its evidence inside")
    if meta.get("types") != TYPE_TABLE:
        raise SnapshotError(
            f"part entry type table is {meta.get('types')!r:.200}, expected {TYPE_TABLE!r}"
        )
    first, last = _int(meta, "first"), _int(meta, "last")
    size_before, size = _int(meta, "size_before"), _int(meta, "size")
    if last < first or size < size_before:
        raise SnapshotError(f"part covers {first}..{last} and sizes {size_before}..{size}")
    ledger = meta.get("ledger")
    if not isinstance(ledger, dict) or set(ledger) != set(_LEDGER_FIELDS):
        raise _fail("part ledger fields", ledger)
    index_rows = meta.get("index_rows")
    if index_rows is not None:
        if (
            not isinstance(index_rows, dict)
            or set(index_rows) != {name for name, *_ in INDEXES}
            or not all(type(n) is int and n >= 0 for n in index_rows.values())
        ):
            raise _fail("part index_rows", index_rows)
        if any(index_rows[name] != size for name in ("event_ids", "entry_seqs", "entry_types")):
            raise SnapshotError(f"part index_rows {index_rows} disagree with size {size}")
        if any((eid_keys, eid_vals, entry_keys, seq_vals, type_vals, eval_keys, eval_vals)):
            raise SnapshotError("part of version 2 holds index sections; its indexes are rows")
    if type_keys != entry_keys:
        raise SnapshotError("part entry_types and entry_seqs name different entries")
    if type_vals.translate(None, _TYPE_CODE_BYTES):
        raise SnapshotError(f"an entry type code is outside the table of {len(TYPE_TABLE)} types")
    indexes = {
        "event_ids": (eid_keys, eid_vals),
        "entry_seqs": (entry_keys, seq_vals),
        "entry_types": (entry_keys, type_vals),
        "evals": (eval_keys, eval_vals),
    }
    for name, kw, vw, _dec, _enc in INDEXES:
        keys, values = indexes[name]
        count, rest = divmod(len(keys), kw)
        if rest or len(values) != count * vw:
            raise SnapshotError(f"part {name}: {len(keys)} key and {len(values)} value bytes")
        # Sorted order is not re-checked here (a Python pass over a million keys would cost
        # a second of every restart): the digest covers damage, and merges check their input.
        if name != "evals" and index_rows is None and count != size - size_before:
            raise SnapshotError(f"part {name} adds {count} entries, expected {size - size_before}")
    count, rest = divmod(len(hashes), HASH_SIZE)
    per_row = PER_ROW
    names_per_row = 2 if index_rows is None else 4
    if (
        rest
        or len(prop_ints) != count * per_row * 8
        or len(prop_name_idx) != count * names_per_row * 4
    ):
        raise SnapshotError(
            f"part proposal columns of {len(hashes)}, {len(prop_ints)} and "
            f"{len(prop_name_idx)} bytes do not describe {count} proposals"
        )
    ints_array, idx_array = array.array("q"), array.array("I")
    ints_array.frombytes(prop_ints)
    idx_array.frombytes(prop_name_idx)
    if sys.byteorder != "little":
        ints_array.byteswap()
        idx_array.byteswap()
    names = json.loads(prop_names)
    if not isinstance(names, list) or not all(type(n) is str for n in names):
        raise _fail("part proposal names", names)
    if idx_array and max(idx_array) >= len(names):
        raise _fail("part proposal name indexes", max(idx_array))
    rollouts = json.loads(rollouts_json)
    if not isinstance(rollouts, list) or len(rollouts) != count:
        raise _fail("part rollouts", rollouts)
    return Columns(
        meta=meta,
        first=first,
        last=last,
        size_before=size_before,
        size=size,
        ledger=ledger,
        index_rows=index_rows,
        indexes=indexes,
        count=count,
        hashes=hashes,
        ints=ints_array.tolist(),
        names=names,
        name_idx=idx_array.tolist(),
        names_per_row=names_per_row,
        rollouts=rollouts,
        docs=docs,
    )


def _decode_sections(sections: list[bytes], docs_apart: bytes) -> Part:
    cols = _columns(sections)
    docs = cols.docs
    if cols.index_rows is not None:  # version 2: the evidence apart, checked here
        check_docs(cols.meta, docs_apart)
        docs = docs_apart
    count, per_row, hashes, ints, idx, names, rollouts = (
        cols.count,
        PER_ROW,
        cols.hashes,
        cols.ints,
        cols.name_idx,
        cols.names,
        cols.rollouts,
    )
    first, last, size_before, size = cols.first, cols.last, cols.size_before, cols.size
    npr = cols.names_per_row
    meta, ledger, index_rows, indexes = cols.meta, cols.ledger, cols.index_rows, cols.indexes
    rows = []
    for k in range(count):
        o = k * per_row
        seq, floor, stamp, at = ints[o : o + 4]
        lengths = tuple(ints[o + 4 : o + per_row])
        if (
            seq < 0
            or stamp < _NO_STAMP
            or at < 0
            or min(lengths) <= 0
            or at + sum(lengths) > len(docs)
        ):
            raise _fail("part proposals[]", ints[o : o + per_row])
        rows.append(
            ProposalRow(
                entry_hash=hashes[k * HASH_SIZE : (k + 1) * HASH_SIZE],
                seq=seq,
                decision_floor=floor,
                stamp=stamp,
                proposer=names[idx[npr * k]],
                policy_id=names[idx[npr * k + 1]],
                docs=docs,
                at=at,
                lengths=lengths,
                rollout=rollouts[k],
                target=(names[idx[npr * k + 2]], names[idx[npr * k + 3]]) if npr == 4 else None,
            )
        )
    return Part(
        first=first,
        last=last,
        size_before=size_before,
        size=size,
        applied=_int(meta, "applied"),
        invalid=_int(meta, "invalid"),
        ledger=ledger,
        proposals=tuple(rows),
        indexes=indexes,
        index_rows=index_rows,
    )


# --------------------------------------------------------------------------------------------
# Chains of parts: merged (compaction) and turned back into a state (restart)


class _Span(Protocol):
    @property
    def first(self) -> int: ...
    @property
    def last(self) -> int: ...
    @property
    def size_before(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def index_rows(self) -> dict[str, int] | None: ...


def check_chain(parts: Sequence[_Span]) -> None:
    """Each part starts where the one before ended: numbers and sizes; one version."""
    if len({p.index_rows is None for p in parts}) > 1:
        raise SnapshotError("a chain mixes parts of version 1 and 2")
    for before, after in itertools.pairwise(parts):
        if after.first != before.last + 1 or after.size_before != before.size:
            raise SnapshotError(
                f"part {after.first}..{after.last} (from size {after.size_before}) does not "
                f"follow part {before.first}..{before.last} (to size {before.size})"
            )


def merge_parts(parts: list[Part]) -> Part:
    """One part holding what `parts` (a chain) hold: the later value of each proposal, the
    last small fields, and every index addition merged into the first part's sorted keys."""
    if not parts:
        raise SnapshotError("no parts to merge")
    check_chain(parts)
    rows: dict[bytes, ProposalRow] = {}
    for p in parts:
        for r in p.proposals:
            rows[r.entry_hash] = r
    indexes: dict[str, tuple[bytes, bytes]] = {}
    for name, kw, vw, _dec, _enc in INDEXES:
        if parts[0].index_rows is not None:
            indexes[name] = (b"", b"")  # version 2: the rows hold them already
            continue
        additions: list[tuple[bytes, bytes]] = []
        for p in parts[1:]:
            keys, values = p.indexes[name]
            additions += [
                (keys[i * kw : i * kw + kw], values[i * vw : i * vw + vw])
                for i in range(len(keys) // kw)
            ]
        additions.sort()
        keys, values = parts[0].indexes[name]
        indexes[name] = merge_sorted(keys, values, kw, vw, additions)
    last = parts[-1]
    return Part(
        first=parts[0].first,
        last=last.last,
        size_before=parts[0].size_before,
        size=last.size,
        applied=last.applied,
        invalid=last.invalid,
        ledger=last.ledger,
        proposals=tuple(sorted(rows.values(), key=lambda r: r.seq)),
        indexes=indexes,
        index_rows=last.index_rows,
    )


def state_from_parts(parts: list[Part], rows: RowLookup | None = None) -> ControllerState:
    """The state a base and the parts after it hold, tracked for the next part. A chain of
    version 2 needs the `rows` its indexes are in; one of version 1 is tracked so that the
    next part is a base (of version 2)."""
    if not parts or parts[0].size_before != 0:
        raise SnapshotError("a chain of parts does not start with a base")
    check_chain(parts)
    if parts[0].index_rows is not None and rows is None:
        raise SnapshotError("a chain of version 2 read without its index rows")
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _state(parts, rows)
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise SnapshotError(f"parts do not decode: {exc}") from exc
    finally:
        if was_enabled:
            gc.enable()


def _state(parts: list[Part], rows: RowLookup | None) -> ControllerState:
    base, last = parts[0], parts[-1]
    ls = LedgerState()
    for name, (_enc, dec) in _LEDGER_FIELDS.items():
        setattr(ls, name, dec(last.ledger[name]))
    if ls.size != last.size:
        raise SnapshotError(f"part says size {last.size}, its ledger fields {ls.size}")
    if last.index_rows is not None and rows is not None:
        for ix, (name, kw, vw, dec, enc) in enumerate(INDEXES):
            setattr(
                ls, name, PackedIndex.on_rows(rows, ix, last.index_rows[name], kw, vw, dec, enc)
            )
    for name, kw, vw, dec, enc in INDEXES if last.index_rows is None else ():
        keys, values = base.indexes[name]
        index: PackedIndex[Any] = PackedIndex(keys, values, kw, vw, dec, enc)
        for later in parts[1:]:
            keys, values = later.indexes[name]
            n = len(keys) // kw
            before = len(index.recent)
            index.recent.update(
                (keys[i * kw : i * kw + kw], dec(values[i * vw : i * vw + vw])) for i in range(n)
            )
            if len(index.recent) != before + n:
                raise SnapshotError(f"part {later.first} adds {name} keys already added")
            index.mark_persisted(later.last, n)
        index._added = len(index.recent)
        setattr(ls, name, index)
    for name, _kw, _vw, _dec, _enc in INDEXES[:2]:
        if len(getattr(ls, name)) != ls.size:
            raise SnapshotError(
                f"parts hold {len(getattr(ls, name))} {name}, expected size {ls.size}"
            )
    state = ControllerState(ledger=ls)
    state.applied, state.invalid = last.applied, last.invalid
    # A chain of version 1 is read, and replaced by a base of version 2 at the next part.
    log = ChangeLog(through=last.last if last.index_rows is not None else -1, size=last.size)
    proposals: dict[bytes, ProposalState] = {}
    rollouts: dict[bytes, RolloutRecord] = {}
    new, cls = object.__new__, StoredProposal
    for part in parts:
        batch = _Batch()
        for r in part.proposals:
            p = new(cls)
            p.__dict__.update(
                entry_hash=r.entry_hash,
                seq=r.seq,
                proposer=r.proposer,
                policy_id=r.policy_id,
                decision_floor=r.decision_floor,
                _docs=r.docs,
                _at=r.at,
                _lengths=list(r.lengths),
                _stamp=None if r.stamp == _NO_STAMP else r.stamp,
                _batch=batch,
            )
            proposals[r.entry_hash] = p
            if r.stamp != _NO_STAMP:
                dict.__setitem__(log, r.entry_hash, r.stamp)
            if r.rollout is not None:
                rollouts[r.entry_hash] = _ROLLOUT_DEC(r.rollout)
            else:
                rollouts.pop(r.entry_hash, None)
    for restored in proposals.values():  # one a later part holds again is decoded from that part
        restored.__dict__["_batch"].add(restored)
    ls.proposals = proposals
    state.rollouts = rollouts
    state.last_seq = log
    return state


__all__ = [
    "PART_MAGIC",
    "PART_VERSION",
    "ROWS_VERSION",
    "Capture",
    "ChangeLog",
    "Columns",
    "FullPreparation",
    "Part",
    "PartBlobs",
    "ProposalRow",
    "after_failure",
    "after_write",
    "begin_full",
    "capture",
    "check_chain",
    "decode_part",
    "encode_capture",
    "encode_capture_v1",
    "encode_part",
    "merge_parts",
    "prepare_step",
    "rebase",
    "state_from_parts",
]
