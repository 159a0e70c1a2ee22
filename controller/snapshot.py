"""The controller's snapshot encoding: explicit, versioned, compact, and checked before use.

A snapshot is ``MAGIC | version (u16) | SHA-256 of the rest | sections``; every section is a
u64 length and its bytes. Nothing in it is executed: decoding builds only the classes named
below, field by field, from their type hints, and anything unexpected — another magic, an
unknown version, a wrong digest (a truncated or bit-flipped blob), a schema fingerprint from
other dataclass definitions, a count that does not match — raises :class:`SnapshotError`, which
the caller answers with a full replay (as before, when a snapshot was missing).

What grows with the log is kept so that a restart does not rebuild it object by object:

* the per-entry indexes of :class:`~ledger.state.LedgerState` (``event_ids``, ``entry_seqs``,
  ``entry_types``) and ``evals`` are stored as sorted fixed-width keys with parallel values and
  loaded as :class:`~controller.packed_index.PackedIndex` (binary search over the bytes; entries
  folded after the snapshot go to a small dict in front of it);
* each proposal's evidence (payload, evals, approvals, health, steps) is one JSON fragment per
  field, decoded the first time it is read (:class:`StoredProposal`; payload and steps, which
  the planner reads for every proposal, for all restored proposals in one pass); its identity
  (hash, seq, proposer, policy, decision floor) is decoded at once, from binary columns.

The rest (keys, policies, kill switches, rollouts, ...) is small and decoded eagerly.

Its length is one idea read top to bottom: the encoding, then the codec built from the state's
type hints (generated and plain decoders side by side, docs/PERFORMANCE.md "Generated code").
"""

from __future__ import annotations

import array
import dataclasses
import gc
import hashlib
import json
import struct
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Union

from controller.errors import SnapshotError
from controller.packed_index import SEQ_WIDTH, PackedIndex, pack, seq_decode, seq_encode
from controller.state import ControllerState, RolloutRecord
from ledger.codegen import GENERATE
from ledger.formats import HASH_SIZE, PAYLOAD_TYPES
from ledger.state import LedgerState, ProposalState

MAGIC = b"STWCSNAP"
VERSION = 1
_HEADER = struct.Struct("<8sH32s")
_LEN = struct.Struct("<Q")
EVENT_ID_SIZE = 16


# --------------------------------------------------------------------------------------------
# Hint-driven JSON codec for the small dataclasses (no pickle: only these classes are built)

_Enc = Callable[[Any], Any]
_Dec = Callable[[Any], Any]
_SCHEMA: list[str] = []  # every class and hint the codecs were built from: the fingerprint


def _fail(what: str, value: Any) -> SnapshotError:
    return SnapshotError(f"snapshot field {what}: observed {type(value).__name__} {value!r:.60}")


def _raise(what: str, value: Any) -> Any:
    raise _fail(what, value)


def _codec(hint: Any, what: str) -> tuple[_Enc, _Dec]:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is bytes:

        def dec_bytes(v: Any) -> bytes:
            if not isinstance(v, str):
                raise _fail(what, v)
            try:
                return bytes.fromhex(v)
            except ValueError:
                raise _fail(what, v) from None

        return (lambda v: v.hex()), dec_bytes
    if hint in (str, int, bool, float):

        def dec_plain(v: Any, t: type = hint) -> Any:
            if type(v) is not t and not (t is float and type(v) is int):
                raise _fail(what, v)
            return float(typing.cast(float, v)) if t is float else v

        return (lambda v: v), dec_plain
    if origin in (Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        enc, dec = _codec(inner, what)
        return (lambda v: None if v is None else enc(v)), (lambda v: None if v is None else dec(v))
    if origin is tuple and args and args[-1] is not Ellipsis:
        fixed = [_codec(a, f"{what}[{i}]") for i, a in enumerate(args)]

        def dec_fixed(v: Any) -> Any:
            if not isinstance(v, list) or len(v) != len(fixed):
                raise _fail(what, v)
            return tuple(d(x) for (_e, d), x in zip(fixed, v, strict=True))

        return (lambda v: [e(x) for (e, _d), x in zip(fixed, v, strict=True)]), dec_fixed
    if origin in (tuple, list, frozenset, set):
        item_enc, item_dec = _codec(args[0], f"{what}[]")
        build: Callable[[list[Any]], Any] = origin if origin is not tuple else tuple
        ordered = origin in (frozenset, set)  # written sorted, so equal states encode equally

        def enc_seq(v: Any) -> Any:
            out = [item_enc(x) for x in v]
            return sorted(out) if ordered else out

        def dec_seq(v: Any) -> Any:
            if not isinstance(v, list):
                raise _fail(what, v)
            return build([item_dec(x) for x in v])

        return enc_seq, dec_seq
    if origin is dict and args == (bytes, int):  # last_seq: one pair per proposal, kept fast

        def dec_seqs(v: Any) -> Any:
            out = {bytes.fromhex(k): x for k, x in v}
            if not all(type(x) is int for x in out.values()):
                raise _fail(what, v)
            return out

        return (lambda v: [[k.hex(), x] for k, x in v.items()]), dec_seqs
    if origin is dict:
        k_enc, k_dec = _codec(args[0], f"{what}.key")
        v_enc, v_dec = _codec(args[1], f"{what}.value")

        def dec_dict(v: Any) -> Any:
            if not isinstance(v, list) or not all(isinstance(p, list) and len(p) == 2 for p in v):
                raise _fail(what, v)
            return {k_dec(k): v_dec(x) for k, x in v}

        # Pairs in insertion order: the order of some dicts is observable (kill_switch_for).
        return (lambda v: [[k_enc(k), v_enc(x)] for k, x in v.items()]), dec_dict
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _dataclass_codec(hint)
    raise TypeError(f"no snapshot codec for {what}: {hint!r}")


_DATACLASS_CODECS: dict[type[Any], tuple[_Enc, _Dec]] = {}


def _dataclass_codec(cls: type[Any]) -> tuple[_Enc, _Dec]:
    found = _DATACLASS_CODECS.get(cls)
    if found is not None:
        return found
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    _SCHEMA.append(
        f"{cls.__module__}.{cls.__qualname__}({', '.join(f'{n}: {hints[n]}' for n in fields)})"
    )
    codecs = [_codec(hints[n], f"{cls.__name__}.{n}") for n in fields]
    encs = [c[0] for c in codecs]
    decs = [c[1] for c in codecs]

    def enc(v: Any) -> Any:
        return [e(getattr(v, name)) for e, name in zip(encs, fields, strict=True)]

    # Built as pickle would (no __post_init__ in these classes, checked here), which is about
    # twice as fast as the frozen dataclass __init__ and its object.__setattr__ per field.
    if hasattr(cls, "__post_init__") or hasattr(cls, "__slots__"):
        raise TypeError(
            f"snapshot decoding builds {cls.__name__} without __init__; it has __post_init__ or __slots__"
        )
    # Generated from the fields (docs/PERFORMANCE.md "Generated code"), or with
    # STEWARD_NO_CODEGEN set, a closure doing the same steps.
    dec = (_generated_decoder if GENERATE else _plain_decoder)(cls, fields, hints, decs)
    _DATACLASS_CODECS[cls] = (enc, dec)
    return enc, dec


def _generated_decoder(
    cls: type[Any], fields: list[str], hints: Mapping[str, Any], decs: list[_Dec]
) -> _Dec:
    """The decoder of `cls` from its record (a list, one value a field), as generated source:
    plain values are type-checked inline, the rest go through their own decoder."""
    env: dict[str, Any] = {"cls": cls, "fail": _raise, "n": len(fields), "new": object.__new__}
    args = []
    for i, (name, d) in enumerate(zip(fields, decs, strict=True)):
        hint = hints[name]
        env[f"d{i}"] = d
        if hint in (str, int, bool):
            env[f"t{i}"] = hint
            args.append(
                f"(x{i} if type(x{i} := v[{i}]) is t{i} else fail({cls.__name__ + '.' + name!r}, x{i}))"
            )
        else:
            args.append(f"d{i}(v[{i}])")
    items = ", ".join(f"{name!r}: {arg}" for name, arg in zip(fields, args, strict=True))
    source = (
        f"def dec(v):\n"
        f"    if type(v) is not list or len(v) != n:\n"
        f"        fail({cls.__name__!r}, v)\n"
        f"    o = new(cls)\n"
        f"    o.__dict__.update({{{items}}})\n"
        f"    return o\n"
    )
    exec(source, env)  # generated from our own dataclass fields only
    dec: _Dec = env["dec"]
    return dec


def _plain_decoder(
    cls: type[Any], fields: list[str], hints: Mapping[str, Any], decs: list[_Dec]
) -> _Dec:
    """What _generated_decoder builds, as a closure: the same checks, in the same order."""
    n = len(fields)
    steps = [
        (i, name, hints[name] if hints[name] in (str, int, bool) else None, d)
        for i, (name, d) in enumerate(zip(fields, decs, strict=True))
    ]

    def dec(v: Any) -> Any:
        if type(v) is not list or len(v) != n:
            _raise(cls.__name__, v)
        o = object.__new__(cls)
        values: dict[str, Any] = {}
        for i, name, plain_type, d in steps:
            if plain_type is None:
                values[name] = d(v[i])
            elif type(x := v[i]) is plain_type:
                values[name] = x
            else:
                _raise(f"{cls.__name__}.{name}", x)
        o.__dict__.update(values)
        return o

    return dec


# Entry types as one byte each; a new payload type changes the table, refusing older snapshots.
TYPE_TABLE = sorted(PAYLOAD_TYPES)
if len(TYPE_TABLE) > 256:
    raise AssertionError(f"{len(TYPE_TABLE)} payload types do not fit one byte")
_SCHEMA.append(f"types {TYPE_TABLE}")

_INDEXED = ("event_ids", "entry_types", "entry_seqs", "evals", "proposals")
_LEDGER_HINTS = typing.get_type_hints(LedgerState)
_LEDGER_FIELDS = {
    f.name: _codec(_LEDGER_HINTS[f.name], f"LedgerState.{f.name}")
    for f in dataclasses.fields(LedgerState)
    if f.name not in _INDEXED
}
_CONTROLLER_HINTS = typing.get_type_hints(ControllerState)
_CONTROLLER_FIELDS = {
    f.name: _codec(_CONTROLLER_HINTS[f.name], f"ControllerState.{f.name}")
    for f in dataclasses.fields(ControllerState)
    if f.name != "ledger"
}
_PROPOSAL_EAGER = ("entry_hash", "seq", "proposer", "policy_id", "decision_floor")
_PROPOSAL_HINTS = typing.get_type_hints(ProposalState)
_PROPOSAL_LAZY = tuple(
    f.name for f in dataclasses.fields(ProposalState) if f.name not in _PROPOSAL_EAGER
)
_PROPOSAL_LAZY_CODECS = [_codec(_PROPOSAL_HINTS[n], f"ProposalState.{n}") for n in _PROPOSAL_LAZY]
_SCHEMA.append(
    f"LedgerState({sorted(_LEDGER_HINTS.items())!r}) ControllerState({sorted(_CONTROLLER_HINTS.items())!r}) "
    f"ProposalState({sorted(_PROPOSAL_HINTS.items())!r}) {RolloutRecord.__name__}"
)
# Changes with any field of any class a snapshot holds: a snapshot from other definitions is refused.
SCHEMA_FINGERPRINT = hashlib.sha256("\n".join(_SCHEMA).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Proposals decoded on first use


class StoredProposal(ProposalState):
    """A ProposalState whose evidence is decoded from the snapshot the first time it is read.

    Identity fields (hash, seq, proposer, policy, decision floor) are set at once; each of
    ``proposal``, ``latest_evals``, ``approvals``, ``health`` and ``steps`` is decoded from the
    proposal's JSON document on its first access, on its own (the planner's look at every
    proposal's target and phase decodes neither evals nor approvals nor health). After that it
    behaves as the ProposalState it was encoded from, and compares equal to it.
    """

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not set yet, i.e. evidence before its first use.
        d = self.__dict__
        i = _PROPOSAL_LAZY_INDEX.get(name)
        if i is None or "_docs" not in d:
            raise AttributeError(name)
        if name in _BATCHED:
            # The planner reads every proposal's target and phase on its first reconcile: decode
            # that field of this proposal's window of the snapshot at once (one JSON parse, not
            # one per proposal).
            d["_batch"].load(i, d.get("_pos", 0))
            return d[name]
        lengths = d["_lengths"]
        start = d["_at"] + sum(lengths[:i])
        value = _PROPOSAL_LAZY_CODECS[i][1](json.loads(d["_docs"][start : start + lengths[i]]))
        d[name] = value
        return value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProposalState):
            return NotImplemented
        return all(
            getattr(self, f.name) == getattr(other, f.name)
            for f in dataclasses.fields(ProposalState)
        )


_PROPOSAL_LAZY_INDEX = {name: i for i, name in enumerate(_PROPOSAL_LAZY)}


class _LazyWithDefault:
    """A lazy field that ProposalState gives a plain default (``pause: ... = None``): the class
    attribute would answer before ``__getattr__`` is ever asked, so this data descriptor, which
    takes precedence over it, reads the instance's value, or decodes it on first use."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type[Any] | None = None) -> Any:
        if obj is None:
            return self
        d = obj.__dict__
        return d[self.name] if self.name in d else obj.__getattr__(self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value


for _name in _PROPOSAL_LAZY:
    if hasattr(ProposalState, _name):  # a plain default, set on the class by @dataclass
        setattr(StoredProposal, _name, _LazyWithDefault(_name))
_BATCHED = frozenset({"proposal", "steps"})
# Proposals per decoding window: about 10 ms of JSON for `proposal` (17.5 µs per proposal for
# `proposal` and `steps` together, bench.replay at a million entries).
BATCH_WINDOW = 1024


class _Batch:
    """The proposals restored from one snapshot, for decoding one field of a window of them at
    once: BATCH_WINDOW proposals, so that whoever reads the first one (under the fold lock)
    decodes a bounded number. A whole snapshot at once was one parse, and 10 s of the fold
    lock at ten million entries (559,000 proposals)."""

    def __init__(self) -> None:
        self.proposals: list[StoredProposal] = []
        self.loaded: set[tuple[int, int]] = set()

    def add(self, p: StoredProposal) -> None:
        p.__dict__["_pos"] = len(self.proposals)
        self.proposals.append(p)

    def load(self, i: int, pos: int = 0) -> None:
        window = pos // BATCH_WINDOW
        if (i, window) in self.loaded:
            return
        self.loaded.add((i, window))
        name, dec = _PROPOSAL_LAZY[i], _PROPOSAL_LAZY_CODECS[i][1]
        todo = [
            p
            for p in self.proposals[window * BATCH_WINDOW : (window + 1) * BATCH_WINDOW]
            if name not in p.__dict__ and "_docs" in p.__dict__
        ]
        parts = []
        for p in todo:
            d = p.__dict__
            lengths = d["_lengths"]
            start = d["_at"] + sum(lengths[:i])
            parts.append(d["_docs"][start : start + lengths[i]])
        # As in decode_state: no cyclic GC while building ~300,000 acyclic objects (with it, the
        # collector walks the growing heap again and again: 2.5-5 s instead of 1 s at 55,000).
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            values = json.loads(b"[" + b",".join(parts) + b"]")
            if len(values) != len(todo):
                raise SnapshotError(
                    f"{len(values)} values of ProposalState.{name} for {len(todo)} proposals"
                )
            for p, value in zip(todo, values, strict=True):
                p.__dict__[name] = dec(value)
        finally:
            if was_enabled:
                gc.enable()


# One encoder for every fragment (json.dumps with separators builds a new one per call).
_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
if _PROPOSAL_EAGER != ("entry_hash", "seq", "proposer", "policy_id", "decision_floor") or any(
    _PROPOSAL_HINTS[n] is not t
    for n, t in zip(_PROPOSAL_EAGER, (bytes, int, str, str, int), strict=True)
):
    raise AssertionError(
        "ProposalState's identity fields changed: update decode_state's row reader"
    )


def _proposal_document(p: ProposalState, stamp: int | None) -> tuple[bytes, list[int]]:
    """A proposal's evidence: one JSON fragment per lazy field, concatenated, and their lengths.

    Re-encoded only when it may have changed: `stamp` is the seq of the last entry naming the
    proposal (ControllerState.last_seq), and the rules change a proposal only when folding an
    entry that names it, so a document written at the same stamp is still exact and is reused
    (a snapshot of a large log re-encodes only the proposals touched since the previous one).
    """
    d = p.__dict__
    if stamp is not None and d.get("_stamp") == stamp:
        if "_docs" in d:  # as loaded: its fragments, still in the snapshot's bytes
            lengths = d["_lengths"]
            return d["_docs"][d["_at"] : d["_at"] + sum(lengths)], lengths
        cached = d.get("_snapshot_doc")
        if cached is not None:
            return cached
    parts = [
        _json(enc(getattr(p, n))).encode()
        for n, (enc, _dec) in zip(_PROPOSAL_LAZY, _PROPOSAL_LAZY_CODECS, strict=True)
    ]
    doc, lengths = b"".join(parts), [len(x) for x in parts]
    d["_stamp"], d["_snapshot_doc"] = stamp, (doc, lengths)
    d.pop("_docs", None)  # re-encoded: the fragments in the old snapshot are stale
    return doc, lengths


# --------------------------------------------------------------------------------------------
# The snapshot


def _hash_value(b: bytes) -> bytes:
    return bytes(b)


def _seq_index(m: Mapping[bytes, int], width: int) -> PackedIndex[int]:
    return pack(m, width, SEQ_WIDTH, seq_decode, seq_encode)


_TYPE_CODES = {name: bytes([i]) for i, name in enumerate(TYPE_TABLE)}
_TYPE_CODE_BYTES = bytes(range(len(TYPE_TABLE)))


def _type_decode(b: bytes) -> str:
    return TYPE_TABLE[b[0]]


def _type_encode(name: str) -> bytes:
    return _TYPE_CODES[name]


def encode_state(state: ControllerState, *, compact: bool = False) -> bytes:
    """The snapshot of `state`.

    With ``compact`` the state's growing indexes are replaced by the packed ones just written
    (same contents), so the next snapshot merges only what was folded since this one.
    """
    ls = state.ledger
    event_ids = _seq_index(ls.event_ids, EVENT_ID_SIZE)
    entry_seqs = _seq_index(ls.entry_seqs, HASH_SIZE)
    entry_types = pack(ls.entry_types, HASH_SIZE, 1, _type_decode, _type_encode)
    evals = pack(ls.evals, HASH_SIZE, HASH_SIZE, _hash_value, _hash_value)
    if entry_types.base_keys != entry_seqs.base_keys:
        raise SnapshotError("entry_types and entry_seqs name different entries")
    # Proposals' identities, binary: hashes, then (seq, decision floor, evidence offset, one
    # length per evidence field) as int64, then (proposer, policy id) as indexes into a table.
    hashes: list[bytes] = []
    ints = array.array("q")
    names: dict[str, int] = {}
    name_idx = array.array("I")
    docs: list[bytes] = []
    at = 0
    for h, p in ls.proposals.items():
        if len(p.entry_hash) != HASH_SIZE:
            raise SnapshotError(f"proposal hash is {len(p.entry_hash)} bytes, expected {HASH_SIZE}")
        doc, lengths = _proposal_document(p, state.last_seq.get(h))
        hashes.append(p.entry_hash)
        ints.extend((p.seq, p.decision_floor, at, *lengths))
        name_idx.append(names.setdefault(p.proposer, len(names)))
        name_idx.append(names.setdefault(p.policy_id, len(names)))
        docs.append(doc)
        at += len(doc)
    if sys.byteorder != "little":
        ints.byteswap()
        name_idx.byteswap()
    meta = {
        "schema": SCHEMA_FINGERPRINT,
        "types": TYPE_TABLE,
        "ledger": {name: enc(getattr(ls, name)) for name, (enc, _d) in _LEDGER_FIELDS.items()},
        "controller": {
            name: enc(getattr(state, name)) for name, (enc, _d) in _CONTROLLER_FIELDS.items()
        },
    }
    sections = [
        _json(meta).encode(),
        b"".join(hashes),
        ints.tobytes(),
        json.dumps(list(names)).encode(),
        name_idx.tobytes(),
        b"".join(docs),
        event_ids.base_keys,
        event_ids.base_values,
        entry_seqs.base_keys,
        entry_seqs.base_values,
        entry_types.base_values,
        evals.base_keys,
        evals.base_values,
    ]
    if compact:
        ls.event_ids, ls.entry_seqs, ls.entry_types, ls.evals = (
            event_ids,
            entry_seqs,
            entry_types,
            evals,
        )
    return frame(sections, MAGIC, VERSION)


def frame(sections: list[bytes], magic: bytes, version: int) -> bytes:
    """``magic | version (u16) | SHA-256 of the rest | sections`` (each a u64 length, bytes)."""
    body = b"".join(part for s in sections for part in (_LEN.pack(len(s)), s))
    return _HEADER.pack(magic, version, hashlib.sha256(body).digest()) + body


def unframe(blob: bytes, magic: bytes, version: int, count: int, what: str) -> list[bytes]:
    """The `count` sections of a blob `frame` wrote with this magic and version, its digest
    checked; SnapshotError naming `what` (a snapshot, a part) and the first thing that differs."""
    if len(blob) < _HEADER.size:
        raise SnapshotError(
            f"{what} is {len(blob)} bytes, shorter than its {_HEADER.size}-byte header"
        )
    found_magic, found_version, digest = _HEADER.unpack_from(blob)
    if found_magic != magic:
        raise SnapshotError(f"{what} magic is {found_magic!r}, expected {magic!r}")
    if found_version != version:
        raise SnapshotError(f"{what} version is {found_version}, expected {version}")
    body = memoryview(blob)[_HEADER.size :]
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotError(f"{what} digest does not match its contents (truncated or damaged)")
    sections: list[bytes] = []
    pos = 0
    while pos < len(body):
        if pos + _LEN.size > len(body):
            raise SnapshotError(f"{what} section header cut at byte {pos}")
        (n,) = _LEN.unpack_from(body, pos)
        pos += _LEN.size
        if pos + n > len(body):
            raise SnapshotError(
                f"{what} section {len(sections)} is {n} bytes, {len(body) - pos} left"
            )
        sections.append(bytes(body[pos : pos + n]))
        pos += n
    if len(sections) != count:
        raise SnapshotError(f"{what} has {len(sections)} sections, expected {count}")
    return sections


_SECTIONS = 13


def decode_state(blob: bytes) -> ControllerState:
    """The state a snapshot holds; SnapshotError if it is not one this code wrote, intact."""
    sections = unframe(blob, MAGIC, VERSION, _SECTIONS, "snapshot")
    # Decoding allocates ~100,000 containers at a million entries and none of them form cycles:
    # the cyclic collector would walk the growing heap again and again (~25% of the time).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _decode_sections(sections)
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise SnapshotError(f"snapshot does not decode: {exc}") from exc
    finally:
        if was_enabled:
            gc.enable()


def _decode_sections(sections: list[bytes]) -> ControllerState:
    (
        meta_json,
        prop_hashes,
        prop_ints,
        prop_names,
        prop_name_idx,
        docs,
        eid_keys,
        eid_vals,
        entry_keys,
        seq_vals,
        type_vals,
        eval_keys,
        eval_vals,
    ) = sections
    meta = json.loads(meta_json)
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA_FINGERPRINT:
        raise SnapshotError(
            "snapshot schema fingerprint differs: written by other state definitions"
        )
    if meta["types"] != TYPE_TABLE:
        raise SnapshotError(
            f"snapshot entry type table is {meta['types']!r:.200}, expected {TYPE_TABLE!r}"
        )
    ls = LedgerState()
    for name, (_enc, dec) in _LEDGER_FIELDS.items():
        setattr(ls, name, dec(meta["ledger"][name]))
    ls.event_ids = PackedIndex(eid_keys, eid_vals, EVENT_ID_SIZE, SEQ_WIDTH, seq_decode, seq_encode)
    ls.entry_seqs = PackedIndex(entry_keys, seq_vals, HASH_SIZE, SEQ_WIDTH, seq_decode, seq_encode)
    ls.entry_types = PackedIndex(entry_keys, type_vals, HASH_SIZE, 1, _type_decode, _type_encode)
    if type_vals.translate(None, _TYPE_CODE_BYTES):  # what is left is not a known code
        raise SnapshotError(f"an entry type code is outside the table of {len(TYPE_TABLE)} types")
    ls.evals = PackedIndex(eval_keys, eval_vals, HASH_SIZE, HASH_SIZE, _hash_value, _hash_value)
    # Every folded entry is in each per-entry index exactly once.
    for name, index in (("event_ids", ls.event_ids), ("entry_seqs", ls.entry_seqs)):
        if len(index) != ls.size:
            raise SnapshotError(
                f"snapshot {name} holds {len(index)} entries, expected size {ls.size}"
            )
    state = ControllerState(ledger=ls)
    for name, (_enc, dec) in _CONTROLLER_FIELDS.items():
        setattr(state, name, dec(meta["controller"][name]))
    last_seq = state.last_seq
    # One proposal per row (tens of thousands in a large log): read from the binary columns in
    # place, not through the generic codecs; the layout is fixed by _PROPOSAL_EAGER (checked at import).
    count, rest = divmod(len(prop_hashes), HASH_SIZE)
    per_row = 3 + len(_PROPOSAL_LAZY)
    if rest or len(prop_ints) != count * per_row * 8 or len(prop_name_idx) != count * 2 * 4:
        raise SnapshotError(
            f"proposal columns of {len(prop_hashes)}, {len(prop_ints)} and "
            f"{len(prop_name_idx)} bytes do not describe {count} proposals"
        )
    ints_array, idx_array = array.array("q"), array.array("I")
    ints_array.frombytes(prop_ints)
    idx_array.frombytes(prop_name_idx)
    if sys.byteorder != "little":
        ints_array.byteswap()
        idx_array.byteswap()
    ints, idx = ints_array.tolist(), idx_array.tolist()
    names = json.loads(prop_names)
    if not isinstance(names, list) or not all(type(n) is str for n in names):
        raise _fail("proposal names", names)
    proposals: dict[bytes, ProposalState] = {}
    new, cls, seq_of, end_of_docs = object.__new__, StoredProposal, last_seq.get, len(docs)
    batch = _Batch()
    for k in range(count):
        h = prop_hashes[k * HASH_SIZE : (k + 1) * HASH_SIZE]
        o = k * per_row
        seq, floor, at = ints[o], ints[o + 1], ints[o + 2]
        lengths = ints[o + 3 : o + per_row]
        if seq < 0 or at < 0 or min(lengths) <= 0 or at + sum(lengths) > end_of_docs:
            raise _fail("proposals[]", ints[o : o + per_row])
        p = new(cls)
        # The evidence stays in the shared `docs` bytes until it is read (no copy per proposal).
        p.__dict__.update(
            entry_hash=h,
            seq=seq,
            proposer=names[idx[2 * k]],
            policy_id=names[idx[2 * k + 1]],
            decision_floor=floor,
            _docs=docs,
            _at=at,
            _lengths=lengths,
            _stamp=seq_of(h),
            _batch=batch,
        )
        proposals[h] = p
        batch.add(p)
    ls.proposals = proposals
    return state


__all__ = [
    "MAGIC",
    "VERSION",
    "StoredProposal",
    "decode_state",
    "encode_state",
    "frame",
    "unframe",
]
