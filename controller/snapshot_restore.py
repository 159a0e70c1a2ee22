"""A restart's fast path: the state of a chain of version 2 parts, proposals left in columns.

`controller.snapshot_parts.state_from_parts` builds a row per proposal and then a proposal
object with its identity fields set: at ten million entries (559,000 proposals) 5 s of a
restart's 5-6 s, after reading and hashing 760 MB of evidence that a restart does not need.
Here a restored proposal is a `ColumnProposal` holding only its part's columns and its row
number; every field, identity included, is read from the columns when first asked for, and
the evidence is read from the database (and its SHA-256 checked) when the first proposal of
the part needs some. `restore_state` is held to `state_from_parts` by equivalence tests.

A damaged evidence blob is found when it is read, in the middle of a fold or a plan: the
`LazyDocs` loader then raises SnapshotError (the store first drops the chain's head, so the
next start replays the log).

Pure: the loader of the evidence is a callable the store supplies.
"""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Callable
from typing import Any

from controller.errors import SnapshotError
from controller.packed_index import PackedIndex, RowLookup
from controller.snapshot import (
    _BATCHED,
    _LEDGER_FIELDS,
    _PROPOSAL_EAGER,
    _PROPOSAL_LAZY,
    _PROPOSAL_LAZY_CODECS,
    _PROPOSAL_LAZY_INDEX,
    StoredProposal,
    _fail,
)
from controller.snapshot_parts import (
    _NO_STAMP,
    _ROLLOUT_DEC,
    INDEXES,
    PER_ROW,
    ChangeLog,
    Columns,
    _columns,
    check_chain,
    check_docs,
    part_sections,
)
from controller.state import ControllerState, RolloutRecord
from ledger.formats import HASH_SIZE, Target
from ledger.state import LedgerState, ProposalState

# Rows per decoding window of `proposal` and `steps`: the views read them for every proposal
# (256 per hold of the fold lock), the planner for a few (the latest step of each target).
WINDOW = 64


class LazyDocs:
    """A part's evidence, loaded (and checked against its meta) on first use, once."""

    def __init__(
        self,
        load: Callable[[], bytes],
        meta: dict[str, Any],
        on_damage: Callable[[str], None] | None = None,
    ) -> None:
        self._load: Callable[[], bytes] | None = load
        self._meta = meta
        self._on_damage = on_damage
        self._docs: bytes | None = None
        self._lock = threading.Lock()

    def get(self) -> bytes:
        docs = self._docs
        if docs is not None:
            return docs
        with self._lock:
            if self._docs is None:
                assert self._load is not None
                loaded = self._load()
                try:
                    check_docs(self._meta, loaded)
                except SnapshotError as exc:
                    if self._on_damage is not None:
                        self._on_damage(str(exc))
                    raise SnapshotError(
                        f"snapshot evidence damaged ({exc}): the snapshot is dropped; restart "
                        "to replay the log"
                    ) from exc
                self._docs, self._load = loaded, None
            return self._docs


class RestoredPart:
    """One part's columns, the evidence behind them, and the windows decoded so far."""

    def __init__(self, cols: Columns, docs: LazyDocs) -> None:
        self.cols = cols
        self.docs = docs
        self.decoded: dict[tuple[int, int], Any] = {}  # (field, row) -> value, until read
        self.windows: set[tuple[int, int]] = set()

    def eager(self, name: str, k: int) -> Any:
        cols = self.cols
        if name == "entry_hash":
            return cols.hashes[k * HASH_SIZE : (k + 1) * HASH_SIZE]
        o = k * PER_ROW
        if name == "seq":
            return cols.ints[o]
        if name == "decision_floor":
            return cols.ints[o + 1]
        if name == "proposer":
            return cols.names[cols.name_idx[4 * k]]
        return cols.names[cols.name_idx[4 * k + 1]]  # policy_id

    def target(self, k: int) -> Target:
        cols = self.cols
        return Target(cols.names[cols.name_idx[4 * k + 2]], cols.names[cols.name_idx[4 * k + 3]])

    def stamp(self, k: int) -> int | None:
        stamp = self.cols.ints[k * PER_ROW + 2]
        return None if stamp == _NO_STAMP else stamp

    def evidence(self, k: int) -> tuple[int, list[int]]:
        """Where row `k`'s evidence is in the docs: its offset and one length per field."""
        o = k * PER_ROW
        at, lengths = self.cols.ints[o + 3], self.cols.ints[o + 4 : o + PER_ROW]
        if at < 0 or min(lengths) <= 0:
            raise _fail("part proposals[]", self.cols.ints[o : o + PER_ROW])
        return at, lengths

    def fragment(self, i: int, k: int) -> bytes:
        at, lengths = self.evidence(k)
        start = at + sum(lengths[:i])
        docs = self.docs.get()
        if start + lengths[i] > len(docs):
            raise _fail("part proposals[]", [at, *lengths])
        return docs[start : start + lengths[i]]

    def lazy(self, i: int, k: int) -> Any:
        """Field `i` of _PROPOSAL_LAZY of row `k`, decoded (a window at once for the batched
        fields, which the planner and the views read for every proposal)."""
        name, dec = _PROPOSAL_LAZY[i], _PROPOSAL_LAZY_CODECS[i][1]
        if name not in _BATCHED:
            return dec(json.loads(self.fragment(i, k)))
        key = (i, k)
        if key not in self.decoded:
            window = k // WINDOW
            if (i, window) in self.windows:  # read before (by a proposal replaced since)
                return dec(json.loads(self.fragment(i, k)))
            self.windows.add((i, window))
            rows = range(window * WINDOW, min(self.cols.count, (window + 1) * WINDOW))
            was_enabled = gc.isenabled()
            gc.disable()  # as in controller.snapshot: many acyclic objects at once
            try:
                values = json.loads(b"[" + b",".join(self.fragment(i, r) for r in rows) + b"]")
                if len(values) != len(rows):
                    raise SnapshotError(f"{len(values)} values for {len(rows)} proposals")
                for r, value in zip(rows, values, strict=True):
                    self.decoded[(i, r)] = dec(value)
            finally:
                if was_enabled:
                    gc.enable()
        return self.decoded.pop(key)


class ColumnProposal(StoredProposal):
    """A proposal restored from a part's columns: ``_p`` (the RestoredPart) and ``_k`` (its
    row) are all it holds until a field is read; then it behaves as the ProposalState it was
    written from (StoredProposal's equality)."""

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not set yet.
        d = self.__dict__
        part = d.get("_p")
        if part is None:
            raise AttributeError(name)
        if name in _PROPOSAL_EAGER:
            value = part.eager(name, d["_k"])
        else:
            i = _PROPOSAL_LAZY_INDEX.get(name)
            if i is None:
                raise AttributeError(name)
            value = part.lazy(i, d["_k"])
        d[name] = value
        return value

    def known_target(self) -> Target:
        """The target, from the columns (the evidence holds it too, and is not read)."""
        d = self.__dict__
        return d["_p"].target(d["_k"])  # type: ignore[no-any-return]

    def kept_evidence(self, stamp: int | None) -> tuple[bytes, int, tuple[int, ...]] | None:
        """The evidence as stored, if nothing was folded into the proposal since (`stamp` is
        the seq of the last entry naming it): a new part copies it rather than encoding."""
        d = self.__dict__
        part, k = d["_p"], d["_k"]
        if stamp is None or part.stamp(k) != stamp:
            return None
        at, lengths = part.evidence(k)
        return part.docs.get(), at, tuple(lengths)


def decode_restored(
    main: bytes,
    load_docs: Callable[[], bytes],
    on_damage: Callable[[str], None] | None = None,
) -> RestoredPart:
    """A part of version 2 from its main blob (digest checked); its evidence is loaded by
    `load_docs` when first needed (`on_damage` is told if it does not match its digest)."""
    cols = _columns(part_sections(main))
    if cols.index_rows is None:
        raise SnapshotError("a part of version 1 is read by decode_part, not here")
    ints, count = cols.ints, cols.count
    if count:  # what decode_part checks per row, as whole columns (C-level min/max)
        if min(ints[0::PER_ROW]) < 0 or min(ints[2::PER_ROW]) < _NO_STAMP:
            raise _fail("part proposals[] seq or stamp", min(ints[0::PER_ROW]))
        if min(ints[3::PER_ROW]) < 0 or any(
            min(ints[4 + j :: PER_ROW]) <= 0 for j in range(PER_ROW - 4)
        ):
            raise _fail("part proposals[] evidence", "an offset or length out of range")
    return RestoredPart(cols, LazyDocs(load_docs, cols.meta, on_damage))


def restore_state(parts: list[RestoredPart], rows: RowLookup) -> ControllerState:
    """The state a base and the parts after it hold (version 2), as state_from_parts builds it,
    its proposals left in columns."""
    if not parts or parts[0].cols.size_before != 0:
        raise SnapshotError("a chain of parts does not start with a base")
    check_chain([p.cols for p in parts])
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _restore(parts, rows)
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise SnapshotError(f"parts do not decode: {exc}") from exc
    finally:
        if was_enabled:
            gc.enable()


def _restore(parts: list[RestoredPart], rows: RowLookup) -> ControllerState:
    last = parts[-1].cols
    ls = LedgerState()
    for name, (_enc, dec) in _LEDGER_FIELDS.items():
        setattr(ls, name, dec(last.ledger[name]))
    if ls.size != last.size:
        raise SnapshotError(f"part says size {last.size}, its ledger fields {ls.size}")
    assert last.index_rows is not None
    for ix, (name, kw, vw, dec, enc) in enumerate(INDEXES):
        setattr(ls, name, PackedIndex.on_rows(rows, ix, last.index_rows[name], kw, vw, dec, enc))
    state = ControllerState(ledger=ls)
    state.applied, state.invalid = _int_meta(last, "applied"), _int_meta(last, "invalid")
    log = ChangeLog(through=last.last, size=last.size)
    proposals: dict[bytes, ProposalState] = {}
    rollouts: dict[bytes, RolloutRecord] = {}
    new, cls = object.__new__, ColumnProposal
    for part in parts:
        cols = part.cols
        hashes = cols.hashes
        keys = [hashes[k * HASH_SIZE : (k + 1) * HASH_SIZE] for k in range(cols.count)]
        for k, h in enumerate(keys):
            p = new(cls)
            d = p.__dict__
            d["_p"] = part
            d["_k"] = k
            proposals[h] = p
        stamps = cols.ints[2::PER_ROW]
        dict.update(log, ((h, s) for h, s in zip(keys, stamps, strict=True) if s != _NO_STAMP))
        for h, r in zip(keys, cols.rollouts, strict=True):
            if r is not None:
                rollouts[h] = _ROLLOUT_DEC(r)
            else:
                rollouts.pop(h, None)
    ls.proposals = proposals
    state.rollouts = rollouts
    state.last_seq = log
    return state


def _int_meta(cols: Columns, name: str) -> int:
    v = cols.meta.get(name)
    if type(v) is not int or v < 0:
        raise _fail(f"part {name}", v)
    return v


__all__ = [
    "WINDOW",
    "ColumnProposal",
    "LazyDocs",
    "RestoredPart",
    "decode_restored",
    "restore_state",
]
